// What the Node client (recommend.mjs) and the browser page (web/app.mjs) share: the runtime's windows,
// pooling, and ranking a flat library (`tivm-library export`). Plain ES module, no imports, no I/O.

// The runtime's windows (runtime/model.py window_starts): every `hop` steps, plus one flush with the end; a
// short input is one window (the graph loop-pads it).
export function windowStarts(steps, window, hop = window) {
  const starts = [];
  for (let s = 0; s + window <= steps; s += hop) starts.push(s);
  if (!starts.length || starts.at(-1) + window < steps) starts.push(Math.max(0, steps - window));
  return starts;
}

export const normalise = (v) => { const n = Math.hypot(...v) || 1e-12; return v.map((x) => x / n); };
// The clip's query: the mean of its window embeddings, re-normalised.
export const meanOf = (rows) => normalise(rows[0].map((_, d) => rows.reduce((s, r) => s + r[d], 0) / rows.length));

// float16 rows stay 2 bytes a value: each is turned into a float through this table as it is multiplied
// (Float16Array is not on every runtime). Exponent 31 (infinity, NaN) never passes flatLibrary's check.
let float16Values = null;
export function float16Table() {
  if (!float16Values) {
    float16Values = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
      float16Values[h] = exponent === 0 ? sign * fraction * 2 ** -24
        : exponent === 31 ? NaN : sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    }
  }
  return float16Values;
}

const ROW_ARRAYS = { int8: Int8Array, float16: Uint16Array, float32: Float32Array };

// A flat library from its index (library.json) and the bytes of its .bin files (ArrayBuffers).
export function flatLibrary(index, embeddings, scales, windowStart) {
  if (index.format !== 'tivm-flat-library' || index.version !== 1) throw new Error('not a tivm-flat-library version 1 index');
  const RowArray = ROW_ARRAYS[index.dtype];
  if (!RowArray) throw new Error(`unknown dtype ${JSON.stringify(index.dtype)} (int8, float16 or float32)`);
  if (embeddings.byteLength !== index.windows * index.dim * RowArray.BYTES_PER_ELEMENT) {
    throw new Error(`embeddings hold ${embeddings.byteLength} bytes, the index says ${index.windows} x ${index.dim} ${index.dtype}`);
  }
  const rows = new RowArray(embeddings);
  if (index.dtype === 'float16' && rows.some((h) => (h & 0x7c00) === 0x7c00)) throw new Error('embeddings are not all finite');
  if (index.dtype === 'float32' && !rows.every(Number.isFinite)) throw new Error('embeddings are not all finite');
  const scaleRows = index.dtype === 'int8' ? new Float32Array(scales) : null;
  if (scaleRows && scaleRows.length !== index.windows) throw new Error('scales do not match the windows');
  const starts = new Float32Array(windowStart);
  if (starts.length !== index.windows) throw new Error('window starts do not match the windows');
  return { index, rows, scales: scaleRows, starts, decode: index.dtype === 'float16' ? float16Table() : null };
}

// The model that embedded the library must be the one embedding the clip: scores across models mean nothing.
export function checkFingerprint(library, modelFingerprint, where = 'library') {
  if (library.index.model_fingerprint !== modelFingerprint) {
    throw new Error(`${where}: built by another model (library ${String(library.index.model_fingerprint).slice(0, 12)}…, ` +
      `model ${String(modelFingerprint).slice(0, 12)}…); rebuild it with \`tivm-library build --model\``);
  }
}

// A song's score is its best window's dot product with the query; ties go to the earlier song.
export function rank({ index, rows, scales, starts, decode }, query, top) {
  const dim = index.dim;
  const best = index.song_offsets.slice(0, -1).map((first, song) => {
    let score = -Infinity, row = first;
    for (let r = first; r < index.song_offsets[song + 1]; r++) {
      let dot = 0;
      if (decode) for (let d = 0; d < dim; d++) dot += decode[rows[r * dim + d]] * query[d];
      else for (let d = 0; d < dim; d++) dot += rows[r * dim + d] * query[d];
      if (scales) dot *= scales[r];
      if (dot > score) { score = dot; row = r; }
    }
    return { song, score, row };
  });
  best.sort((a, b) => b.score - a.score || a.song - b.song);
  const windowSeconds = index.window_seconds ?? 15;
  return best.slice(0, top).map(({ song, score, row }, i) => ({
    rank: i + 1, title: index.songs.title[song], score, start: starts[row],
    end: Math.min(starts[row] + windowSeconds, index.songs.duration[song] ?? Infinity), song_index: song,
  }));
}

// A song's PCM (16 kHz mono) -> the sample ranges of its windows, as the runtime cuts them (runtime/model.py
// _embed_pcm): `window` patches every `hop` patches; a song shorter than a window is one run with its patches.
export function pcmWindows(samples, frontend, window, hop = window) {
  if (samples < frontend.min_samples) return [];
  const patch = frontend.patch_hop_frames * frontend.hop_samples;
  const patches = Math.floor((1 + Math.floor((samples - frontend.window_samples) / frontend.hop_samples)) / frontend.patch_frames);
  const span = frontend.min_samples + (Math.min(window, patches) - 1) * patch;
  return windowStarts(patches, window, hop).map((s) => ({ patch: s, begin: s * patch, end: Math.min(samples, s * patch + span) }));
}
