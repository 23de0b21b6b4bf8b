// Chat templates in the browser: the model's Jinja template (config.json `chat_template`, from the
// checkpoint) rendered with @huggingface/jinja, the JavaScript Jinja that transformers.js uses for
// exactly this. It applies trim_blocks and lstrip_blocks like the runtime's renderer
// (runtime/chat_template.py); tests/web/test_chat.py proves them byte-identical over every template
// the project ships or tests.

import { Template } from '../vendor/jinja/index.js';

export function renderChat(template, messages, { addGenerationPrompt = true, ...specials } = {}) {
  return new Template(template).render({
    messages,
    add_generation_prompt: addGenerationPrompt, // raise_exception is built in
    ...specials,
  });
}

// The prompt text for one user turn, as runtime/chat_template.py chat_prompt builds it
// (bos_token / eos_token named from the config's ids); the raw text without a template or chat off.
export function formatPrompt(prompt, config, tokenizer, chat) {
  if (!chat || !config.chat_template) return prompt;
  const specials = {};
  if (config.bos_token_id != null) specials.bos_token = tokenizer.idToToken(config.bos_token_id);
  const eos = (config.eos_token_ids || [])[0];
  if (eos != null) specials.eos_token = tokenizer.idToToken(eos);
  return renderChat(config.chat_template, [{ role: 'user', content: prompt }], specials);
}
