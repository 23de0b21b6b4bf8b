// The key/value cache on the GPU (WebGPU EP): the session leaves present_* in GPU buffers
// (preferredOutputLocation 'gpu-buffer'), commit slices them on the device, and the next forward
// feeds the slices back as past_* without a byte crossing to the CPU.
//
// A [1, heads, P, headDim] float32 tensor is row-major, so the P positions of one head are one
// contiguous run of P·headDim floats:
//
//   present  | h0: p0 p1 .. p(keep-1) p(keep) .. p(P-1) | h1: p0 .. p(P-1) | ...
//                \___ copy (keep·headDim floats) __/          \__ copy __/
//   past     | h0: p0 .. p(keep-1) | h1: p0 .. p(keep-1) | ...
//
// so keeping the first `keep` positions is one copyBufferToBuffer per head, all in one command
// buffer per commit. WebGPU orders the queue: the copies run after the forward that wrote the
// present, and the next forward reads the slices after the copies.

// onnxruntime-web sizes its GPU buffers in 16-byte steps (its downloader reads whole steps).
const ALIGN = 16;
const FLOAT = 4;

const aligned = (bytes) => Math.ceil(bytes / ALIGN) * ALIGN;

// Keep the first `keep` positions of a gpu-buffer tensor, recording the copies in `encoder` (the
// caller submits). Returns a new gpu-buffer tensor that owns its buffer (dispose() destroys it;
// WebGPU frees the memory once the work already submitted with it is done). Keeping nothing gives
// an empty CPU tensor: a GPU buffer cannot be bound with zero bytes.
export function slicePositionsOnGpu(ort, device, encoder, tensor, keep) {
  const [batch, heads, positions, headDim] = tensor.dims;
  if (keep > positions) throw new Error(`cannot keep ${keep} of ${positions} cached positions`);
  const dims = [batch, heads, keep, headDim];
  if (keep === 0) return new ort.Tensor('float32', new Float32Array(0), dims);
  const run = keep * headDim * FLOAT; // one head's kept positions
  const bytes = batch * heads * run;
  const buffer = device.createBuffer({
    size: aligned(bytes),
    // STORAGE: bound as the next forward's input; COPY_SRC: onnxruntime may copy out of it, and a
    // download reads it; COPY_DST: the slice is written by copies.
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  });
  for (let row = 0; row < batch * heads; row++) {
    encoder.copyBufferToBuffer(tensor.gpuBuffer, row * positions * headDim * FLOAT, buffer, row * run, run);
  }
  return ort.Tensor.fromGpuBuffer(buffer, {
    dataType: 'float32',
    dims,
    download: async () => new Float32Array(await readBuffer(device, buffer, bytes)),
    dispose: () => buffer.destroy(),
  });
}

// A float32 tensor in JavaScript memory copied once into a GPU buffer it owns, for an input that is
// the same every forward (the adapter banks): a CPU tensor would be uploaded again at every run.
// An empty tensor stays where it is.
export function uploadToGpu(ort, device, tensor) {
  if (tensor.type !== 'float32' || tensor.data.length === 0) return tensor;
  const bytes = tensor.data.byteLength;
  const buffer = device.createBuffer({ size: aligned(bytes), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buffer, 0, tensor.data);
  return ort.Tensor.fromGpuBuffer(buffer, {
    dataType: 'float32',
    dims: tensor.dims,
    download: async () => new Float32Array(await readBuffer(device, buffer, bytes)),
    dispose: () => buffer.destroy(),
  });
}

// The first `bytes` of a GPU buffer, read back through a mappable copy (for tests and diagnostics:
// generation never reads the cache back).
export async function readBuffer(device, buffer, bytes) {
  const staging = device.createBuffer({ size: aligned(bytes), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffer, 0, staging, 0, aligned(bytes));
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

// The GPU tensors a runner holds: counted as they come (a forward's gpu-buffer outputs, a slice)
// and go (dispose), so a test can see that memory does not grow with the number of steps.
export class GpuTensors {
  constructor() {
    this.live = 0;
    this.bytes = 0;
    this.peak = 0; // most tensors held at once
  }

  // Count `tensor` if it is on the GPU; returns it.
  hold(tensor) {
    if (tensor?.location === 'gpu-buffer') {
      this.live += 1;
      this.bytes += tensorBytes(tensor);
      this.peak = Math.max(this.peak, this.live);
    }
    return tensor;
  }

  // Dispose `tensor` if it is on the GPU (a CPU tensor is left to the garbage collector).
  release(tensor) {
    if (tensor?.location !== 'gpu-buffer') return;
    this.live -= 1;
    this.bytes -= tensorBytes(tensor);
    tensor.dispose();
  }

  snapshot() {
    return { live: this.live, bytes: this.bytes, peak: this.peak };
  }
}

// Every byte the device moves between the GPU and JavaScript, whoever asks — this page or
// onnxruntime-web inside (a kernel placed on the CPU would read its input back): WebGPU reads only
// through a buffer mapped for reading, and writes through queue.writeBuffer or a buffer mapped for
// writing. Counted by wrapping those calls on this device (cheap: a few per forward), from now on.
export function meterDevice(device) {
  if (device.meter) return device.meter;
  const meter = { readBytes: 0, writeBytes: 0 };
  const queue = device.queue;
  const writeBuffer = queue.writeBuffer.bind(queue);
  queue.writeBuffer = (buffer, offset, data, dataOffset = 0, size) => {
    const elementBytes = data.BYTES_PER_ELEMENT ?? 1;
    meter.writeBytes += size !== undefined ? size * elementBytes : data.byteLength - dataOffset * elementBytes;
    return writeBuffer(buffer, offset, data, dataOffset, size);
  };
  const createBuffer = device.createBuffer.bind(device);
  device.createBuffer = (descriptor) => {
    const buffer = createBuffer(descriptor);
    if (descriptor.mappedAtCreation) meter.writeBytes += descriptor.size;
    const mapAsync = buffer.mapAsync.bind(buffer);
    buffer.mapAsync = (mode, offset = 0, size) => {
      const bytes = size ?? buffer.size - offset;
      if (mode & GPUMapMode.READ) meter.readBytes += bytes;
      if (mode & GPUMapMode.WRITE) meter.writeBytes += bytes;
      return mapAsync(mode, offset, size);
    };
    return buffer;
  };
  device.meter = meter;
  return meter;
}

const BYTES = { float32: 4, int64: 8, int32: 4, float16: 2, uint8: 1, int8: 1, bool: 1 };

// Bytes of a tensor's data wherever it lives.
export function tensorBytes(tensor) {
  return tensor.dims.reduce((a, d) => a * d, 1) * (BYTES[tensor.type] ?? 4);
}
