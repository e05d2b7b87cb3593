// outpost-guest.js: write Outpost stages in JavaScript (componentize-js).
//
// What the Rust SDK (`outpost-guest`) gives, over the plain objects
// componentize-js passes for the `streaming-stage` world: typed tensors, the
// stage's config, errors with kinds, models through wasi-nn, and partial
// outputs. A stage is a class; `exportStage` makes the three functions the
// component exports:
//
//   import * as og from './outpost-guest.js';
//   class Double {
//     constructor(config) { config.denyUnknown([]); }
//     describe() {
//       return og.stageInfo('double', '0.1.0', 'x * 2',
//         [og.spec('x', 'f32')], [og.spec('y', 'f32')]);
//     }
//     run(inputs) {
//       const x = inputs.take('x');
//       return [og.fromF32('y', x.dims, og.toF32(x).map((v) => v * 2))];
//     }
//   }
//   export const { init, describe, run } = og.exportStage(Double);
//
// In WIT terms: records are objects, enums strings ('f32', 'invalid-input'),
// list<u8> a Uint8Array, option none `undefined`.

import { loadByName } from 'wasi:nn/graph@0.2.0-rc-2024-10-28';
import { Tensor as NnTensor } from 'wasi:nn/tensor@0.2.0-rc-2024-10-28';
import { emit as emitPartials } from 'outpost:plugin/partials@0.1.0';

/** A failure with a kind ('invalid-config', 'invalid-input', 'inference', 'internal'). */
export class StageError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
    // What componentize-js sends as the `err` of the export's result.
    this.payload = { kind, message };
  }
  static invalidConfig(message) { return new StageError('invalid-config', message); }
  static invalidInput(message) { return new StageError('invalid-input', message); }
  static inference(message) { return new StageError('inference', message); }
  static internal(message) { return new StageError('internal', message); }
}

// ---- tensors ----

const SIZES = { f16: 2, f32: 4, f64: 8, bf16: 2, u8: 1, i32: 4, i64: 8, utf8: 1 };
const encoder = new TextEncoder();
// A leading byte order mark stays text, as it does in the other SDKs.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const count = (dims) => Array.from(dims).reduce((n, d) => n * d, 1);

function checked(name, dims, values) {
  if (values.length !== count(dims)) {
    throw StageError.internal(`tensor '${name}': ${values.length} values do not fill dims [${Array.from(dims)}]`);
  }
  return Uint32Array.from(dims);
}

export function fromF32(name, dims, values) {
  const d = checked(name, dims, values);
  return { name, dims: d, elementType: 'f32', data: new Uint8Array(Float32Array.from(values).buffer) };
}

export function fromI64(name, dims, values) {
  const d = checked(name, dims, values);
  return { name, dims: d, elementType: 'i64', data: new Uint8Array(BigInt64Array.from(values, BigInt).buffer) };
}

export function fromText(name, text) {
  const data = encoder.encode(text);
  return { name, dims: new Uint32Array([data.length]), elementType: 'utf8', data };
}

export function expectType(tensor, type) {
  if (tensor.elementType !== type) {
    throw StageError.invalidInput(`tensor '${tensor.name}' holds ${tensor.elementType} elements, expected ${type}`);
  }
}

/** The tensor's dims (numbers), after checking it has `rank` of them. */
export function expectRank(tensor, rank) {
  if (tensor.dims.length !== rank) {
    throw StageError.invalidInput(
      `tensor '${tensor.name}' has shape [${Array.from(tensor.dims).join(', ')}] (rank ${tensor.dims.length}), expected rank ${rank}`);
  }
  return Array.from(tensor.dims);
}

function bytesOf(tensor, type) {
  expectType(tensor, type);
  const bytes = count(tensor.dims) * SIZES[type];
  if (tensor.data.byteLength !== bytes) {
    throw StageError.invalidInput(
      `tensor '${tensor.name}': shape [${Array.from(tensor.dims).join(', ')}] of ${type} needs ${bytes} bytes but it holds ${tensor.data.byteLength}`);
  }
  // A copy: the bytes may sit at any offset, typed arrays need alignment.
  return tensor.data.slice().buffer;
}

export const toF32 = (tensor) => new Float32Array(bytesOf(tensor, 'f32'));
export const toI64 = (tensor) => new BigInt64Array(bytesOf(tensor, 'i64'));

/** The text of a utf8 tensor (raw u8 tensors too, when they hold UTF-8). */
export function toText(tensor) {
  if (tensor.elementType !== 'u8') expectType(tensor, 'utf8');
  try {
    return decoder.decode(tensor.data);
  } catch (e) {
    throw StageError.invalidInput(`tensor '${tensor.name}' is not valid UTF-8: ${e.message}`);
  }
}

/** The tensors a call received, taken by name. */
export class Inputs {
  constructor(tensors) {
    this.tensors = new Map();
    // The first of two with one name, as the Rust SDK takes it.
    for (const t of tensors) if (!this.tensors.has(t.name)) this.tensors.set(t.name, t);
  }
  take(name) {
    const t = this.tensors.get(name);
    if (t === undefined) {
      throw StageError.invalidInput(`missing input tensor '${name}'; received: [${[...this.tensors.keys()].join(', ')}]`);
    }
    this.tensors.delete(name);
    return t;
  }
  takeOptional(name) {
    const t = this.tensors.get(name);
    this.tensors.delete(name);
    return t;
  }
  names() { return [...this.tensors.keys()]; }
}

// ---- config ----

/** A stage's config: each key's value as the pipeline gave it (TOML, as JSON). */
export class Config {
  constructor(raw) {
    this.entries = new Map(raw.entries);
    this.files = new Map(raw.files.map((f) => [f.name, f.data]));
  }
  keys() { return [...this.entries.keys()]; }
  /** The key's value, or `fallback` when it is not set. */
  get(key, fallback) {
    if (!this.entries.has(key)) return fallback;
    try {
      return JSON.parse(this.entries.get(key));
    } catch (e) {
      throw StageError.invalidConfig(`config key '${key}' = ${this.entries.get(key)}: ${e.message}`);
    }
  }
  /** Like `get`, checked: 'integer', 'number', 'boolean', 'string', 'strings' (a list of them). */
  getTyped(key, type, fallback) {
    const value = this.get(key, fallback);
    if (value === undefined) return undefined;
    // JSON's 2.0 reads as the number 2: an integer is told by its text.
    const text = this.entries.get(key);
    const ok = {
      integer: Number.isSafeInteger(value) && (text === undefined || /^\s*-?\d+\s*$/.test(text)),
      number: typeof value === 'number',
      boolean: typeof value === 'boolean',
      string: typeof value === 'string',
      strings: Array.isArray(value) && value.every((v) => typeof v === 'string'),
    }[type];
    if (!ok) {
      const wanted = type === 'strings' ? 'a list of strings' : `a ${type}`;
      throw StageError.invalidConfig(`config key '${key}' must be ${wanted}, got ${JSON.stringify(value)}`);
    }
    return value;
  }
  require(key) {
    if (!this.entries.has(key)) {
      throw StageError.invalidConfig(`config key '${key}' is required; add \`${key} = ...\` to the stage's [config] table`);
    }
    return this.get(key);
  }
  /** The bytes (Uint8Array) of the file the pipeline gives as `name`, or undefined. */
  file(name) { return this.files.get(name); }
  denyUnknown(known) {
    for (const key of this.entries.keys()) {
      if (!known.includes(key)) {
        throw StageError.invalidConfig(`unknown config key '${key}'; this stage knows: ${known.join(', ')}`);
      }
    }
  }
}

// ---- describe ----

export const sym = (name) => ({ tag: 'symbol', val: name });
export const fixed = (size) => ({ tag: 'fixed', val: size });

/** A tensor spec: `type` undefined takes any type, `dims` undefined any shape. */
export const spec = (name, type, dims) => ({ name, elementType: type, dims });

export const stageInfo = (name, version, description, inputs = [], outputs = []) =>
  ({ name, version, description, inputs, outputs });

// ---- wasi-nn ----

const NN_TYPES = { f16: 'FP16', f32: 'FP32', f64: 'FP64', bf16: 'BF16', u8: 'U8', i32: 'I32', i64: 'I64' };
const FROM_NN = Object.fromEntries(Object.entries(NN_TYPES).map(([k, v]) => [v, k]));

function nnError(model, call, e) {
  const error = e?.payload;
  if (error && typeof error.code === 'function') {
    return StageError.inference(`model '${model}': ${call} failed (${error.code()}): ${error.data()}`);
  }
  return StageError.inference(`model '${model}': ${call} failed: ${e}`);
}

/** A model the host preloaded for this stage, loaded by name. */
export class Model {
  constructor(name, graph, context) {
    this.name = name;
    this.graph = graph;
    this.context = context;
  }
  static load(name) {
    let graph;
    try {
      graph = loadByName(name);
    } catch (e) {
      throw nnError(name, 'load-by-name', e);
    }
    try {
      return new Model(name, graph, graph.initExecutionContext());
    } catch (e) {
      throw nnError(name, 'init-execution-context', e);
    }
  }
  /** Runs the model on named tensors; returns its named outputs. */
  compute(inputs) {
    const named = inputs.map((t) => {
      const type = NN_TYPES[t.elementType];
      if (type === undefined) {
        throw StageError.invalidInput(
          `tensor '${t.name}' of ${t.elementType} cannot be given to model '${this.name}': wasi-nn has no such element type`);
      }
      // The host takes these tensors over: they are not used again here.
      return [t.name, new NnTensor(Uint32Array.from(t.dims), type, t.data)];
    });
    let outputs;
    try {
      outputs = this.context.compute(named);
    } catch (e) {
      throw nnError(this.name, 'compute', e);
    }
    return outputs.map(([name, t]) => {
      const tensor = { name, dims: t.dimensions(), elementType: FROM_NN[t.ty()], data: t.data() };
      // The host counts the handle against the stage's limits until it is dropped.
      t[Symbol.dispose]?.();
      return tensor;
    });
  }
}

// ---- partial outputs ----

/** Sends partial outputs to the request's client now; false once nobody listens. */
export const emit = (outputs) => emitPartials(outputs);

// ---- the export ----

const MESSAGE_LIMIT = 4096;

function typed(e) {
  if (e instanceof StageError) return e;
  // A bug in the stage: its stack is the message (stderr goes nowhere).
  let text = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}`.trim() : String(e);
  if (text.length > MESSAGE_LIMIT) {
    // Deep recursion makes long stacks: keep their ends.
    text = `${text.slice(0, MESSAGE_LIMIT / 2)}\n[...]\n${text.slice(-MESSAGE_LIMIT / 2)}`;
  }
  return StageError.internal(text);
}

/** The `init`, `describe` and `run` exports, running a stage class. */
export function exportStage(StageClass) {
  let stage = null;
  return {
    init(config) {
      try {
        stage = new StageClass(new Config(config));
      } catch (e) {
        throw typed(e);
      }
    },
    describe() {
      return stage.describe();
    },
    run(inputs) {
      try {
        return stage.run(new Inputs(inputs));
      } catch (e) {
        throw typed(e);
      }
    },
  };
}
