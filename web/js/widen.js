// The wasm target's weights: the 4-bit (8-bit for the token table) blocks the model ships, widened
// to float32 before the session is created and handed to onnxruntime-web as the in-memory external
// data file the graph's MatMul weights point at. The twin of runtime/widening.py (the format is
// documented there); the two give the same bits (tests/web/test_widen.py).
//
// Why here and not in the graph: onnxruntime-web's wasm MatMulNBits is 6-10x slower than a float32
// MatMul of the same shape, and letting onnxruntime fold dequantizing nodes at load kept ~12 float
// copies of every weight alive at once (bad_alloc in the 4 GiB wasm heap for SmolLM2).
//
// One block of 32 weights:  w = fround((code − zero) · scale) + min, stored into a Float32Array.
// (code − zero) · scale is exact in a double (an 8-bit integer times a 24-bit significand), so one
// rounding gives float32's product; the sum of two float32s rounded to a double and then to float32
// equals float32's own sum (double rounding is innocuous when 53 >= 2·24 + 2). So every weight is
// bit-identical to numpy's float32 arithmetic in the same order.

export const INDEX_SUFFIX = '.widened.json';
const BLOCK = 32;

// float16 bits → float32 value (exact: every float16 is a float32).
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1024 + fraction) * 2 ** (exponent - 25);
}

// A typed array over [offset, offset + length) of the blocks file (copied when unaligned).
function view(blocks, [offset, length], Type) {
  const start = blocks.byteOffset + offset;
  if (start % Type.BYTES_PER_ELEMENT === 0) return new Type(blocks.buffer, start, length / Type.BYTES_PER_ELEMENT);
  return new Type(blocks.slice(offset, offset + length).buffer);
}

function scalesOf(blocks, entry) {
  const [offset, length, dtype] = entry.scales;
  if (dtype === 'float32') return view(blocks, [offset, length], Float32Array);
  const half = view(blocks, [offset, length], Uint16Array);
  const out = new Float32Array(half.length);
  for (let i = 0; i < half.length; i++) out[i] = halfToFloat(half[i]);
  return out;
}

// One index entry → Wᵀ [K, N] float32 written into `out` (length K·N).
export function widenTensor(entry, blocks, out) {
  const { rows: n, cols: k, blocks: nb, bits } = entry;
  const codes = view(blocks, entry.codes, Uint8Array);
  const scales = scalesOf(blocks, entry);
  const zeroPoints = entry.zero_points ? view(blocks, entry.zero_points, Uint8Array) : null;
  const zpRow = Math.ceil(nb / 2); // zero points: 4 bits a block, each row starting on a byte
  const mins = entry.mins ? view(blocks, entry.mins, Float32Array) : null;
  const blockBytes = (BLOCK * bits) / 8;
  for (let r = 0; r < n; r++) {
    for (let b = 0; b < nb; b++) {
      const scale = scales[r * nb + b];
      let zero = entry.zero;
      if (zeroPoints) {
        const byte = zeroPoints[r * zpRow + (b >> 1)];
        zero = b & 1 ? byte >> 4 : byte & 0x0f;
      }
      const min = mins ? mins[r * nb + b] : 0;
      const base = (r * nb + b) * blockBytes;
      const last = Math.min(BLOCK, k - b * BLOCK);
      let o = b * BLOCK * n + r; // Wᵀ[b·32 + j][r]
      for (let j = 0; j < last; j++, o += n) {
        let code;
        if (bits === 4) {
          const byte = codes[base + (j >> 1)];
          code = j & 1 ? byte >> 4 : byte & 0x0f;
        } else {
          code = codes[base + j];
        }
        out[o] = mins ? Math.fround((code - zero) * scale) + min : (code - zero) * scale;
      }
    }
  }
  return out;
}

// The whole in-memory external data file: {path, data} for onnxruntime-web's externalData.
// onTensor(done, total) after each tensor, awaited: the caller may yield to its event loop there.
export async function widenAll(index, blocks, onTensor = async () => {}) {
  if (index.format !== 1) throw new Error(`widened weights: index format ${index.format}, this page reads 1`);
  if (blocks.byteLength !== index.blocks_bytes) {
    throw new Error(`${index.blocks}: ${blocks.byteLength} bytes, the index says ${index.blocks_bytes}`);
  }
  const floats = new Float32Array(index.floats_bytes / 4);
  for (let i = 0; i < index.tensors.length; i++) {
    const entry = index.tensors[i];
    const start = entry.offset / 4;
    widenTensor(entry, blocks, floats.subarray(start, start + entry.rows * entry.cols));
    await onTensor(i + 1, index.tensors.length);
  }
  return { path: index.floats, data: new Uint8Array(floats.buffer) };
}
