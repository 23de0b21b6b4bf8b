// DGR's pattern index in the browser: exact cosine search over the bank's pattern keys.
// Pyodide has no hnswlib; a pure-Python scan would cost O(N·d) interpreted operations per query,
// so the scan runs here, at native speed, with the semantics of runtime.index.ExactIndex
// (vectors normalised in double precision, ties to the earlier pattern).

function normalised(vector) {
  let norm = 0;
  for (let i = 0; i < vector.length; i++) norm += vector[i] * vector[i];
  norm = Math.sqrt(norm) || 1;
  return Float64Array.from(vector, (x) => x / norm);
}

export class PatternIndex {
  constructor(dim) {
    this.dim = dim;
    this.vectors = []; // Float64Array per pattern, unit length
    this.slots = [];
  }

  // flat: numbers [count * dim]; slots: numbers [count]
  add(flat, slots) {
    if (flat.length !== slots.length * this.dim) throw new Error(`${flat.length} values for ${slots.length} patterns of dimension ${this.dim}`);
    slots.forEach((slot, i) => {
      this.vectors.push(normalised(flat.slice(i * this.dim, (i + 1) * this.dim)));
      this.slots.push(slot);
    });
  }

  // Up to k [slot, similarity] pairs, most similar first.
  search(vector, k) {
    const q = normalised(vector);
    const sims = this.vectors.map((v, label) => {
      let s = 0;
      for (let i = 0; i < q.length; i++) s += q[i] * v[i];
      return [s, label];
    });
    sims.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    return sims.slice(0, k).map(([s, label]) => [this.slots[label], s]);
  }

  get size() {
    return this.slots.length;
  }
}
