#!/usr/bin/env node
// tivm without Python: embed raw RGB frames (or 16 kHz PCM) with a raw-input bundle in onnxruntime-node and
// rank a flat song library (`tivm-library export`). Everything else an app needs is inside the graphs.
//   node recommend.mjs --model DIR --frames FILE --shape T,H,W [--library FLAT_DIR] [--top 10]
//   node recommend.mjs --model DIR --pcm FILE          16 kHz mono float32 PCM: window embeddings
//   node recommend.mjs --model DIR --golden            check this platform against DIR/golden (exit 1 if not)
// Output: one JSON object on stdout.
import fs from 'node:fs';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { checkFingerprint, flatLibrary, meanOf, pcmWindows, rank, windowStarts } from './rank.mjs';

const args = {};
process.argv.slice(2).forEach((a, i, all) => {
  if (a.startsWith('--')) args[a.slice(2)] = all[i + 1] && !all[i + 1].startsWith('--') ? all[i + 1] : true;
});
const readJson = (file) => JSON.parse(fs.readFileSync(file, 'utf8'));
const bytes = (file) => { const b = fs.readFileSync(file); return b.buffer.slice(b.byteOffset, b.byteOffset + b.length); };

const manifest = readJson(path.join(args.model, 'manifest.json'));
const sessions = {};
async function runWindow(name, data, hop) {  // ONE window per run: the int8 head quantizes per run
  const branch = manifest[name];
  sessions[name] ??= await ort.InferenceSession.create(path.join(args.model, branch.file), { intraOpNumThreads: 2 });
  const feeds = { [branch.input.name]: data, [branch.hop.name]: new ort.Tensor('int64', [BigInt(hop)], []) };
  return Array.from((await sessions[name].run(feeds))[branch.output.name].data);
}

const frameTensor = (frames, [, h, w], a, b) => new ort.Tensor('uint8', frames.subarray(a * h * w * 3, b * h * w * 3), [b - a, h, w, 3]);
const pcmTensor = (pcm, a, b) => new ort.Tensor('float32', pcm.subarray(a, b), [b - a]);

async function embedFrames(frames, shape, window = 15) {
  const rows = [];
  for (const s of windowStarts(shape[0], window)) rows.push(await runWindow('video', frameTensor(frames, shape, s, Math.min(shape[0], s + window)), window));
  return rows;
}

async function embedPcm(pcm, window = 15) {
  const fe = manifest.audio.frontend;
  if (pcm.length < fe.min_samples) throw new Error(`PCM of ${pcm.length} samples is shorter than one patch (${fe.min_samples})`);
  const rows = [];
  for (const { begin, end } of pcmWindows(pcm.length, fe, window)) rows.push(await runWindow('audio', pcmTensor(pcm, begin, end), window));
  return rows;
}

function rankFolder(folder, query, top) {  // the ranking itself is rank.mjs's, shared with the browser page
  const index = readJson(path.join(folder, 'library.json'));
  const library = flatLibrary(index, bytes(path.join(folder, 'embeddings.bin')),
    index.dtype === 'int8' ? bytes(path.join(folder, 'scales.bin')) : null, bytes(path.join(folder, 'window_start.bin')));
  checkFingerprint(library, manifest.model_fingerprint, folder);
  return rank(library, query, top);
}

async function checkGolden() {
  const golden = readJson(path.join(args.model, 'golden', 'golden.json')), results = [];
  for (const c of golden.cases) {
    const raw = bytes(path.join(args.model, 'golden', path.basename(c.input.file)));
    const data = c.input.dtype === 'uint8' ? new Uint8Array(raw) : new Float32Array(raw);
    for (const run of c.runs) {
      const [a, b] = run.slice;
      const input = c.branch === 'video' ? frameTensor(data, c.input.shape, a, b) : pcmTensor(data, a, b);
      const got = await runWindow(c.branch, input, run.hop), want = run.embedding;
      const maxAbs = Math.max(...got.map((g, i) => Math.abs(g - want[i])));
      const cosine = got.reduce((s, g, i) => s + g * want[i], 0) / (Math.hypot(...got) * Math.hypot(...want));
      results.push({ branch: c.branch, slice: run.slice, max_abs_diff: maxAbs, cosine,
        ok: maxAbs <= c.tolerance.max_abs_diff && cosine >= c.tolerance.min_cosine });
    }
  }
  return results;
}

const started = performance.now();
const out = { onnxruntime: ort.env.versions?.node };
if (args.golden) {
  out.golden = await checkGolden();
  out.ok = out.golden.every((r) => r.ok);
} else if (args.pcm) {
  out.vectors = await embedPcm(new Float32Array(bytes(args.pcm)));
} else {
  const shape = String(args.shape).split(',').map(Number), frames = new Uint8Array(bytes(args.frames));
  if (frames.length !== shape[0] * shape[1] * shape[2] * 3) throw new Error(`${args.frames}: not T*H*W*3 bytes`);
  out.vectors = await embedFrames(frames, shape);
  out.query = meanOf(out.vectors);
  if (args.library) out.results = rankFolder(args.library, out.query, Number(args.top ?? 10));
}
out.ms = performance.now() - started;
console.log(JSON.stringify(out));
process.exitCode = out.ok === false ? 1 : 0;
