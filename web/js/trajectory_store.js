// The browser's trajectory store (learning loop A, docs/learning.md "In the browser"): every answer
// the page got, and the feedback given on it, kept in IndexedDB so they survive a reload and stay on
// this device. The same interface as runtime/learning/store.py's TrajectoryStore (add a trajectory,
// add feedback, read them back), and the same records as runtime/learning/trajectory.py's
// Trajectory and Feedback, field for field: the learning loops read either store alike.
//
//   database "ruvdllm-learning" (version 1)
//     trajectories   keyPath "id"                    Trajectory records
//     feedback       autoIncrement, index "completion_id"   Feedback records, oldest first
//
// Feedback is stored as what the user did (kind, and the corrected text); what it is worth as a
// number is the learning code's (trajectory.py feedback_value), not decided twice.

const DB_NAME = 'ruvdllm-learning';
const DB_VERSION = 1;
export const FEEDBACK_KINDS = Object.freeze(['rating', 'up', 'down', 'correction']); // trajectory.py

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error || new Error('the transaction was aborted'));
    tx.onerror = () => reject(tx.error);
  });
}

// A completion id shaped like the server's (runtime/learning/trajectory.py new_completion_id).
export function newCompletionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `cmpl-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

export class TrajectoryStore {
  static async open() {
    const opening = indexedDB.open(DB_NAME, DB_VERSION);
    opening.onupgradeneeded = () => {
      const db = opening.result;
      if (!db.objectStoreNames.contains('trajectories')) db.createObjectStore('trajectories', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('feedback')) {
        db.createObjectStore('feedback', { autoIncrement: true }).createIndex('completion_id', 'completion_id');
      }
    };
    return new TrajectoryStore(await request(opening));
  }

  constructor(db) {
    this.db = db;
  }

  // One transaction per record: a tab closed mid-write loses at most that record.
  async addTrajectory(trajectory) {
    const tx = this.db.transaction('trajectories', 'readwrite');
    tx.objectStore('trajectories').put(trajectory);
    await done(tx);
  }

  async addFeedback({ completion_id, kind, rating = null, correction = null }) {
    if (!FEEDBACK_KINDS.includes(kind)) throw new Error(`feedback kind ${kind}: unknown (choose from ${FEEDBACK_KINDS.join(', ')})`);
    if (kind === 'correction' && !String(correction || '').trim()) throw new Error('correction: empty (give the corrected answer)');
    const record = { completion_id, kind, rating, correction, created: Date.now() / 1000 };
    const tx = this.db.transaction('feedback', 'readwrite');
    tx.objectStore('feedback').add(record);
    await done(tx);
    return record;
  }

  async trajectory(id) {
    return (await request(this.db.transaction('trajectories').objectStore('trajectories').get(id))) ?? null;
  }

  async feedbackFor(id) {
    const index = this.db.transaction('feedback').objectStore('feedback').index('completion_id');
    return request(index.getAll(id));
  }

  async count() {
    const tx = this.db.transaction(['trajectories', 'feedback']);
    const [trajectories, feedback] = await Promise.all([
      request(tx.objectStore('trajectories').count()),
      request(tx.objectStore('feedback').count()),
    ]);
    return { trajectories, feedback };
  }
}

const round6 = (x) => Math.round(x * 1e6) / 1e6;

// One step as the store keeps it (trajectory.py step_summary): small numbers, no token lists.
// `event`: the worker's step event (runtime/pyodide_backend.py step_event).
export function stepSummary(event, taloraOn) {
  return {
    span: event.span,
    step: event.step,
    t: event.t,
    committed: event.committed.length,
    retrieved: event.retrieved.length,
    drafted: event.drafted ?? 0,
    entropy: round6(event.entropy ?? 0),
    confidence: round6(event.confidence ?? 1),
    talora: taloraOn ? event.talora.map(round6) : [],
    patterns: (event.patterns || []).map(([p, s]) => [p, round6(s)]),
    forward_ms: Math.round((event.forward_ms ?? 0) * 1000) / 1000,
  };
}

// The Trajectory record of one finished generation (trajectory.py trajectory_of). The browser has
// no prompt embedding to give (the graph's query vector stays in the engine), hence null, as for
// the AR sampler on CPython.
export function trajectoryRecord({ id, model, bank, prompt, promptTokens, settings, steps, answer, answerTokens, finishReason, wallMs }) {
  const patterns = [...new Set(steps.flatMap((s) => s.patterns.map(([p]) => p)))].sort((a, b) => a - b);
  return {
    id,
    created: Date.now() / 1000,
    model,
    bank,
    prompt,
    prompt_tokens: Array.from(promptTokens || []),
    embedding: null,
    settings,
    steps,
    patterns,
    answer,
    answer_tokens: Array.from(answerTokens || []),
    finish_reason: finishReason,
    timings: {
      wall_ms: Math.round(wallMs * 1000) / 1000,
      forward_ms: Math.round(steps.reduce((s, x) => s + x.forward_ms, 0) * 1000) / 1000,
      steps: steps.length,
    },
  };
}
