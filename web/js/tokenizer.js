// The model's tokenizer in the browser, read from the artifact's tokenizer.json.
//
// @huggingface/tokenizers is a pure-JavaScript implementation of the Hugging Face `tokenizers`
// pipeline (normalizer, pre-tokenizer, BPE/Unigram/WordPiece, post-processor, decoder): ~8 kB
// gzipped, no dependencies, works from a local tokenizer.json with no network. The alternatives
// were heavier (transformers.js brings its own copy of onnxruntime-web) or not maintained.
// tests/web/test_tokenizer.py holds it to the same ids as `tokenizers` on CPython.

import { Tokenizer } from '../vendor/tokenizers/tokenizers.min.mjs';

export class ModelTokenizer {
  constructor(tokenizerJson) {
    // The artifact carries no tokenizer_config.json: special tokens come from tokenizer.json.
    this.inner = new Tokenizer(tokenizerJson, {});
    this.texts = new Map();
  }

  encode(text, { addSpecialTokens = false } = {}) {
    return this.inner.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids, { skipSpecialTokens = true } = {}) {
    if (!ids.length) return ''; // the library rejects an empty list
    return this.inner.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }

  // The text of one token on its own (for the live view: a position's current guess); memoised,
  // as the view asks for every position at every step.
  tokenText(id) {
    let text = this.texts.get(id);
    if (text === undefined) {
      text = this.inner.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
      this.texts.set(id, text);
    }
    return text;
  }

  tokenId(token) {
    return this.inner.token_to_id(token);
  }

  idToToken(id) {
    return this.inner.id_to_token(id);
  }

  // Positional forms for Python (runtime/pyodide_backend.py JsTokenizer): no options objects.
  encodeIds(text, addSpecialTokens) {
    return this.encode(text, { addSpecialTokens });
  }

  decodeIds(ids, skipSpecialTokens) {
    return this.decode(ids, { skipSpecialTokens });
  }
}
