// The page: sample the chosen video at 1 fps in a <video> + canvas, embed it with the bundle's raw video graph
// in onnxruntime-web (WebAssembly), rank the flat library, play the clip with the chosen song segment.
// Served by `tivm-web` (runtime/cli/web.py), which hands out exactly these URLs.
import * as ort from '/ort/ort.wasm.min.mjs';
import { checkFingerprint, flatLibrary, meanOf, pcmWindows, rank, windowStarts } from '/js/rank.mjs';

const $ = (id) => document.getElementById(id);
const TOP = 10;
const AT_OR_AFTER_S = 1e-4;  // a frame presented this close before second k counts as k (rounded timestamps)
// Seek offsets past second k, tried in turn until the frame shown starts at or after k: the first one shows a
// frame stamped exactly k (constant-rate clips); the later ones reach the first frame after k otherwise
// (down to 20 ms frame periods, i.e. up to 50 fps, before a frame could be skipped).
const SEEK_OFFSETS_S = [0.001, 0.011, 0.021, 0.034, 0.051];
const NEW_FRAME_WAIT_MS = 250;  // after 'seeked', how long to wait for a frame callback before assuming none came

// What tests and benchmarks read: the page's state and its last result (see tests/test_web.py).
const page = window.tivm = { state: 'loading', error: null, result: null };
const setState = (state) => { page.state = state; document.body.dataset.state = state; };

function showError(message) {
  page.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = '';
  setState('error');
}

function status(text, done = null) {
  $('status').textContent = text;
  if (done !== null) $('progress').value = done;
}

async function fetchOk(url, what) {
  let response;
  try { response = await fetch(url); } catch (e) { throw new Error(`${what}: cannot reach the server (${e.message})`); }
  if (!response.ok) throw new Error(`${what} is missing on the server (${url}: ${response.status}); start it with \`tivm-web --model DIR --library songs.npz\``);
  return response;
}

async function fetchBytes(url, what, onProgress) {
  const response = await fetchOk(url, what);
  const total = Number(response.headers.get('Content-Length')) || 0;
  if (!total || !response.body) return response.arrayBuffer();
  const out = new Uint8Array(total);
  let got = 0;
  for (const reader = response.body.getReader(); ;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (got + value.length > total) throw new Error(`${what}: more bytes than announced`);
    out.set(value, got);
    got += value.length;
    onProgress?.(got / total);
  }
  if (got !== total) throw new Error(`${what}: ${got} of ${total} bytes arrived`);
  return out.buffer;
}

// ---- start: the model and the library ----
let manifest, session, library, windowFrames;
const models = {};

async function load() {
  const started = performance.now();
  try {
    manifest = await (await fetchOk('/model/manifest.json', 'The model (manifest.json)')).json();
  } catch (e) {
    throw new Error(e instanceof SyntaxError ? `The model's manifest.json is not JSON (${e.message})` : e.message);
  }
  const video = manifest.video;
  if (!video || video.kind !== 'raw') throw new Error('The model is not a raw bundle: export it with `tivm-export RUN --branch-kind raw`');
  windowFrames = Math.round(video.clip_seconds * video.frontend.fps);
  status('Loading the song library…');
  const index = await (await fetchOk('/library/library.json', 'The song library (library.json)')).json();
  const [embeddings, scales, starts] = await Promise.all([
    fetchBytes('/library/embeddings.bin', 'The library embeddings'),
    index.dtype === 'int8' ? fetchBytes('/library/scales.bin', 'The library scales') : null,
    fetchBytes('/library/window_start.bin', 'The library window starts'),
  ]);
  library = flatLibrary(index, embeddings, scales, starts);
  checkFingerprint(library, manifest.model_fingerprint, 'The song library');
  status('Loading the model…');
  const modelBytes = await fetchBytes('/model/video.onnx', 'The model file (video graph)',
    (done) => status(`Loading the model… ${Math.round(done * 100)} %`, done));
  ort.env.wasm.wasmPaths = '/ort/';
  // threads need cross-origin isolation (SharedArrayBuffer), which the server's headers give
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(modelBytes), { executionProviders: ['wasm'] });
  } catch (e) {
    throw new Error(`onnxruntime-web cannot load the model: ${e.message}`);
  }
  models.loadMs = performance.now() - started;
  models.modelBytes = modelBytes.byteLength;
  $('about').textContent = `${index.songs.title.length} songs (${index.windows} windows), model ${manifest.model_fingerprint.slice(0, 12)}…, ` +
    `${(modelBytes.byteLength / 1e6).toFixed(1)} MB video graph, ${ort.env.wasm.numThreads} thread(s)`;
  status('Ready: choose a video.', 0);
  $('clip').disabled = false;
  $('own-songs').disabled = manifest.audio?.kind !== 'raw';
  setState('ready');
}

// ---- frames: second k is the first frame presented at or after k s (from the first frame), upright ----
function waitFor(target, event) {
  return new Promise((resolve, reject) => {
    const ok = () => { target.removeEventListener('error', bad); resolve(); };
    const bad = () => { target.removeEventListener(event, ok); reject(new Error(decodeProblem(target))); };
    target.addEventListener(event, ok, { once: true });
    target.addEventListener('error', bad, { once: true });
  });
}

function decodeProblem(video) {
  const e = video.error;
  return `this browser cannot decode the file${e ? ` (${e.message || `media error ${e.code}`})` : ''}; try an MP4 (H.264) or WebM video`;
}

// Seek to `t` and resolve with the presentation time of the frame now shown (requestVideoFrameCallback's
// mediaTime); without that API, or when no new frame is presented, the previous frame's time or `t`.
async function seek(video, t, previous) {
  let presented = null;
  const frame = 'requestVideoFrameCallback' in video
    ? new Promise((resolve) => video.requestVideoFrameCallback((_, meta) => { presented = meta.mediaTime; resolve(); }))
    : null;
  const seeked = waitFor(video, 'seeked');
  video.currentTime = t;
  await seeked;
  if (!frame) return t;
  await Promise.race([frame, new Promise((resolve) => setTimeout(resolve, NEW_FRAME_WAIT_MS))]);
  return presented ?? previous ?? t;
}

async function* sampleFrames(video, canvas) {
  const context = canvas.getContext('2d', { willReadFrequently: true });
  const duration = video.duration;
  let first = await seek(video, 0, null), previous = first;
  for (let k = 0; ; k++) {
    let shown = k === 0 ? first : null;
    for (const offset of k === 0 ? [] : SEEK_OFFSETS_S) {
      if (first + k + offset > duration) break;
      const at = await seek(video, first + k + offset, previous);
      if (at >= first + k - AT_OR_AFTER_S) { shown = at; break; }
    }
    if (shown === null) return;  // no frame at or after second k: the clip has ended
    previous = shown;
    const w = video.videoWidth, h = video.videoHeight;  // display size: the browser applies the rotation
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    context.drawImage(video, 0, 0, w, h);
    const rgba = context.getImageData(0, 0, w, h).data, rgb = new Uint8Array(w * h * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
    yield { rgb, w, h, time: shown - first, estimatedTotal: Math.max(k + 1, Math.ceil(duration - 1e-3)) };
  }
}

// ONE window per run: the int8 head quantizes per run, so batching windows would change its numbers.
async function embedWindow(frames) {
  const { w, h } = frames[0], data = new Uint8Array(frames.length * w * h * 3);
  frames.forEach((f, i) => data.set(f.rgb, i * w * h * 3));
  const v = manifest.video;
  const feeds = { [v.input.name]: new ort.Tensor('uint8', data, [frames.length, h, w, 3]),
                  [v.hop.name]: new ort.Tensor('int64', [BigInt(windowFrames)], []) };
  const out = (await session.run(feeds))[v.output.name];
  return Array.from(out.data);
}

// Frames are embedded as they come, a window at a time, keeping only the last window's frames in memory:
// windows start every `windowFrames` frames, plus one flush with the end (windowStarts, as the runtime).
async function embedClip(file) {
  const video = $('video'), canvas = document.createElement('canvas');
  video.controls = false;
  video.onplay = video.onpause = video.onseeked = video.onended = null;  // the previous clip's soundtrack
  $('soundtrack').pause();
  video.src = URL.createObjectURL(file);
  await waitFor(video, 'loadedmetadata');
  if (!video.videoWidth) throw new Error(`${file.name}: no picture to sample (an audio-only file?), or ${decodeProblem(video)}`);
  if (!Number.isFinite(video.duration)) throw new Error(`${file.name}: the browser reports no duration for it (a live stream, or a recording without an index): save it as an MP4 first`);
  const kept = [], vectors = [], times = [];
  let count = 0, sampleMs = 0, embedMs = 0, mark = performance.now();
  for await (const frame of sampleFrames(video, canvas)) {
    sampleMs += performance.now() - mark;
    kept.push(frame); times.push(frame.time); count++;
    if (kept.length > windowFrames) kept.shift();
    status(`Frame ${count} of about ${frame.estimatedTotal}…`, count / (frame.estimatedTotal + 1));
    if (count % windowFrames === 0) {
      mark = performance.now();
      vectors.push(await embedWindow(kept));
      embedMs += performance.now() - mark;
    }
    mark = performance.now();
  }
  if (!count) throw new Error(`${file.name}: no video frames could be read (${decodeProblem(video)})`);
  const starts = windowStarts(count, windowFrames);
  if (starts.length > vectors.length) {  // the flush window, or the only one of a short clip: the last frames
    status('Embedding the last window…');
    mark = performance.now();
    vectors.push(await embedWindow(kept.slice(-Math.min(count, windowFrames))));
    embedMs += performance.now() - mark;
  }
  return { vectors, frames: count, frameTimes: times, size: [canvas.width, canvas.height], sampleMs, embedMs };
}

// ---- optional: the user's own songs, embedded here with the audio graph and ranked with the library ----
let audioSession = null;
const ownSongs = [];  // { title, url, vectors, starts (s), duration (s) }

async function embedSong(file) {
  const fe = manifest.audio.frontend, a = manifest.audio;
  if (!audioSession) {
    const bytes = await fetchBytes('/model/audio.onnx', 'The model file (audio graph)',
      (done) => status(`Loading the audio graph… ${Math.round(done * 100)} %`, done));
    audioSession = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ['wasm'] });
  }
  let decoded;
  try {  // decoded and resampled to 16 kHz by the browser (its own resampler: docs/web.md)
    decoded = await new OfflineAudioContext(1, 1, fe.sample_rate).decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new Error(`${file.name}: this browser cannot decode the audio (${e.message || e})`);
  }
  const pcm = new Float32Array(decoded.length);  // mono: the mean of the channels, as the runtime
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < pcm.length; i++) pcm[i] += channel[i] / decoded.numberOfChannels;
  }
  const stepSeconds = fe.patch_hop_frames * fe.hop_samples / fe.sample_rate;
  const hop = Math.max(1, Math.round((library.index.hop_seconds ?? 5) / stepSeconds));  // the library's hop
  const windows = pcmWindows(pcm.length, fe, windowFrames, hop);
  if (!windows.length) throw new Error(`${file.name}: shorter than one patch (${fe.min_samples / fe.sample_rate} s of sound)`);
  const vectors = [];
  for (const [i, { begin, end }] of windows.entries()) {
    status(`${file.name}: window ${i + 1} of ${windows.length}…`, i / windows.length);
    const feeds = { [a.input.name]: new ort.Tensor('float32', pcm.subarray(begin, end), [end - begin]),
                    [a.hop.name]: new ort.Tensor('int64', [BigInt(windowFrames)], []) };
    vectors.push(Array.from((await audioSession.run(feeds))[a.output.name].data));
  }
  return { title: file.name.replace(/\.[^.]+$/, ''), url: URL.createObjectURL(file), vectors,
           starts: windows.map((w) => w.patch * stepSeconds), duration: pcm.length / fe.sample_rate };
}

async function onOwnSongs(files) {
  if (!files.length) return;
  const before = page.state;
  setState('working');
  $('own-songs').disabled = true;
  const problems = [];
  for (const file of files) {
    try { ownSongs.push(await embedSong(file)); } catch (e) { problems.push(e.message); }
  }
  page.ownSongs = ownSongs.map((s) => ({ title: s.title, vectors: s.vectors, starts: s.starts }));
  $('own-songs').disabled = false;
  if (problems.length) { showError(problems.join('\n')); return; }
  status(`${ownSongs.length} song(s) of your own added: they are ranked with the library.`, 1);
  if (page.result) {  // rank the chosen clip again, now with them
    page.result.results = rankAll(page.result.query);
    showResults(page.result.results);
  }
  setState(page.result ? 'done' : before === 'error' ? 'ready' : before);
}

// The library's top songs and the user's own, by score (own songs: `own` set, song_index "own-<i>").
function rankAll(query) {
  const own = ownSongs.map((song, i) => {
    let score = -Infinity, best = 0;
    song.vectors.forEach((v, w) => { const dot = v.reduce((s, x, d) => s + x * query[d], 0); if (dot > score) { score = dot; best = w; } });
    const start = song.starts[best];
    return { title: song.title, score, start, end: Math.min(start + (library.index.window_seconds ?? 15), song.duration),
             song_index: `own-${i}`, own: true };
  });
  return [...rank(library, query, TOP), ...own].sort((x, y) => y.score - x.score).slice(0, TOP)
    .map((r, i) => ({ ...r, rank: i + 1 }));
}

// ---- results and playback ----
const songBlobs = new Map();
const clock = (s) => `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, '0')}`;

function showResults(results) {
  const body = $('results');
  body.replaceChildren(...results.map((r) => {
    const row = document.createElement('tr');
    const cells = [r.rank, r.own ? `${r.title} (your song)` : r.title, r.score.toFixed(4), `${clock(r.start)}–${clock(r.end)}`];
    cells.forEach((text, i) => {
      const cell = document.createElement('td');
      cell.textContent = String(text);  // titles come from files: text, never HTML
      if (i !== 1) cell.className = 'num';
      row.append(cell);
    });
    const button = document.createElement('button');
    button.textContent = '▶ play with clip';
    button.addEventListener('click', () => playWith(r, row));
    const last = document.createElement('td');
    last.append(button);
    row.append(last);
    return row;
  }));
  $('ranking').hidden = false;
}

async function playWith(result, row) {
  const video = $('video'), audio = $('soundtrack');
  document.querySelectorAll('tr.chosen').forEach((r) => r.classList.remove('chosen'));
  row?.classList.add('chosen');
  $('now-playing').textContent = `Soundtrack: ${result.title}, from ${clock(result.start)}`;
  try {
    if (result.own) {
      songBlobs.set(result.song_index, ownSongs[Number(result.song_index.slice(4))].url);
    } else if (!songBlobs.has(result.song_index)) {
      const bytes = await fetchBytes(`/songs/${result.song_index}`, `The song file of "${result.title}"`);
      songBlobs.set(result.song_index, URL.createObjectURL(new Blob([bytes])));
    }
  } catch (e) { $('now-playing').textContent = e.message; return; }
  audio.src = songBlobs.get(result.song_index);
  page.soundtrack = { song_index: result.song_index, start: result.start };
  video.muted = true;
  video.controls = true;
  const sync = () => { audio.currentTime = result.start + video.currentTime; };
  video.onplay = () => { sync(); audio.play().catch(() => {}); };
  video.onpause = () => audio.pause();
  video.onseeked = sync;
  video.onended = () => audio.pause();
  video.currentTime = 0;
  video.play().catch(() => {});  // a browser may refuse to start without a click: the controls remain
}

async function onClip(file) {
  if (!file) return;
  const started = performance.now();
  $('error').hidden = true;
  $('ranking').hidden = true;
  page.error = null;
  page.result = null;
  setState('working');
  $('clip').disabled = true;
  try {
    status(`Reading ${file.name}…`, 0);
    const clip = await embedClip(file);
    const query = meanOf(clip.vectors);
    const rankStarted = performance.now();
    const results = rankAll(query);
    const rankMs = performance.now() - rankStarted;
    const totalMs = performance.now() - started;
    page.result = { file: file.name, results, query, vectors: clip.vectors, frames: clip.frames, frameTimes: clip.frameTimes,
                    size: clip.size, timings: { totalMs, sampleMs: clip.sampleMs, embedMs: clip.embedMs, rankMs, loadMs: models.loadMs },
                    threads: ort.env.wasm.numThreads };
    showResults(results);
    $('timing').textContent = `${clip.frames} frames (${clip.size.join('×')}), ${clip.vectors.length} window(s): ` +
      `${(totalMs / 1000).toFixed(2)} s from choosing the file to the ranking`;
    status(`Done: ${file.name}`, 1);
    setState('done');
    playWith(results[0], $('results').firstElementChild);
  } catch (e) {
    showError(e.message);
  } finally {
    $('clip').disabled = false;
  }
}

$('clip').addEventListener('change', (event) => onClip(event.target.files[0]));
$('own-songs').addEventListener('change', (event) => onOwnSongs([...event.target.files]));
load().catch((e) => showError(e.message));
