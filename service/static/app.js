// QuartzNet ASR web page: upload or record audio, POST /transcribe, show words with timings.
// Recording streams the microphone to the WebSocket /v1/realtime for live words (README:
// "Live transcription over a WebSocket"). Plain browser JavaScript; talks only to the public
// API of the server that served it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), statusText: $("status-text"),
    dropzone: $("dropzone"), fileInput: $("file-input"),
    recordBtn: $("record-btn"), recordLabel: $("record-label"), recordTime: $("record-time"), meterBar: $("meter-bar"),
    liveToggle: $("live-toggle"),
    clip: $("clip"), clipName: $("clip-name"), clipMeta: $("clip-meta"), player: $("player"),
    model: $("model-select"), beamOptions: $("beam-options"), beamWidth: $("beam-width"), hotwords: $("hotwords"),
    transcribeBtn: $("transcribe-btn"), copyBtn: $("copy-btn"),
    error: $("error"), errorTitle: $("error-title"), errorMessage: $("error-message"),
    placeholder: $("placeholder"), busy: $("busy"), result: $("result"),
    transcript: $("transcript"), words: $("words"), rawJson: $("raw-json"),
    statLatency: $("stat-latency"), statDuration: $("stat-duration"), statRtf: $("stat-rtf"),
    statModel: $("stat-model"), statDecoder: $("stat-decoder"),
  };

  const TARGET_RATE = 16000;        // what the models use; the server resamples anything 8-48 kHz
  const MAX_RATE = 48000;
  const MAX_RECORD_S = 300;
  const LOW_CONFIDENCE = 0.5;
  const LIVE_MESSAGE_S = 0.1;       // audio per WebSocket message; the server runs the model every 0.32 s

  let clip = null;                  // {blob, name}
  let clipUrl = null;
  let inFlight = null;              // AbortController of the running request
  let wordButtons = [];             // [{button, start, end}]
  let recorder = null;

  // --- formatting ------------------------------------------------------------------------
  const fmtSeconds = (s) => (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s";
  const fmtMs = (ms) => (ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s");
  const fmtClock = (s) => Math.floor(s / 60) + ":" + String(Math.floor(s % 60)).padStart(2, "0");
  const fmtBytes = (n) => (n < 1024 * 1024 ? (n / 1024).toFixed(0) + " KB" : (n / 1024 / 1024).toFixed(1) + " MB");

  // --- server status and models -----------------------------------------------------------
  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.statusText.textContent = text;
    el.status.title = text;
  }

  async function pollHealth() {
    try {
      const resp = await fetch("/health/ready", { cache: "no-store" });
      const body = await resp.json().catch(() => ({}));
      if (resp.ok) {
        const m = body.model;
        setStatus("ready", m ? `Ready · ${m.name}@${m.version}` : "Ready");
        if (el.model.options.length <= 1) loadModels();
      } else {
        setStatus("loading", (body.error && body.error.message) || `Not ready (HTTP ${resp.status})`);
      }
    } catch (err) {
      setStatus("down", "Server unreachable");
    }
  }

  async function loadModels() {
    let data = [];
    try {
      const resp = await fetch("/v1/models", { cache: "no-store" });
      if (!resp.ok) return;
      data = (await resp.json()).data || [];
    } catch (err) {
      return;
    }
    const previous = el.model.value;
    // Each loaded version appears as NAME@VERSION; the active one also under its bare NAME.
    const versions = data.filter((m) => m.id !== m.name);
    el.model.replaceChildren();
    for (const m of versions) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = `${m.name} · v${m.version}` + (m.state === "active" ? " (active)" : "");
      el.model.append(option);
    }
    if (!versions.length) {
      const option = document.createElement("option");
      option.value = "";
      option.textContent = "Server default";
      el.model.append(option);
    }
    const active = versions.find((m) => m.state === "active");
    if (previous && versions.some((m) => m.id === previous)) el.model.value = previous;
    else if (active) el.model.value = active.id;
    cards = Object.fromEntries(versions.map((m) => [m.id, m.card]));
    showCard();
  }

  // The model card of the chosen version: what it recognises, what not, and how well.
  let cards = {};
  function showCard() {
    const card = cards[el.model.value];
    const box = $("model-card");
    if (!box) return;
    if (!card) { box.hidden = true; return; }
    const lines = [card.recognises || card.summary, card.not_for, card.vocabulary && card.vocabulary.description]
      .filter(Boolean);
    box.replaceChildren(...lines.map((text) => Object.assign(document.createElement("p"), { textContent: text })));
    box.hidden = false;
  }

  // --- choosing audio ---------------------------------------------------------------------
  function setClip(blob, name, meta, upload = true) {
    clip = { blob, name };
    if (clipUrl) URL.revokeObjectURL(clipUrl);
    clipUrl = URL.createObjectURL(blob);
    el.player.src = clipUrl;
    el.clipName.textContent = name;
    el.clipMeta.textContent = meta || fmtBytes(blob.size);
    el.clip.hidden = false;
    el.transcribeBtn.disabled = false;
    if (upload) transcribe();
  }

  el.dropzone.addEventListener("click", () => el.fileInput.click());
  el.dropzone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); el.fileInput.click(); }
  });
  el.model.addEventListener("change", showCard);
  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    if (file) setClip(file, file.name);
    el.fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    el.dropzone.addEventListener(type, (e) => { e.preventDefault(); el.dropzone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    el.dropzone.addEventListener(type, () => el.dropzone.classList.remove("dragging"));
  }
  el.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) setClip(file, file.name);
  });

  // --- recording: raw PCM via Web Audio, encoded as WAV here ---------------------------------
  // MediaRecorder would give WebM/Opus, which the server's libsndfile cannot decode.
  async function startRecording() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("Recording is not available", "This browser does not allow microphone access on this page " +
        "(browsers require HTTPS or localhost). Upload a file instead.");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (err) {
      showError("Microphone unavailable", err && err.name === "NotAllowedError"
        ? "Microphone access was denied. Allow it in the browser's site settings and try again."
        : `Could not open the microphone (${(err && err.message) || err}).`);
      return;
    }
    let ctx, source;
    try {
      ctx = new AudioContext({ sampleRate: TARGET_RATE });
      source = ctx.createMediaStreamSource(stream);
    } catch (err) {           // some browsers cannot resample a live stream: record at the native rate
      if (ctx) ctx.close();
      ctx = new AudioContext();
      source = ctx.createMediaStreamSource(stream);
    }
    const chunks = [];
    const live = el.liveToggle.checked && ctx.sampleRate <= MAX_RATE ? openLive(ctx.sampleRate) : null;
    const onSamples = (samples) => {
      if (!recorder || recorder.stopping) return;
      chunks.push(samples);
      recorder.numSamples += samples.length;
      el.recordTime.dataset.seconds = (recorder.numSamples / ctx.sampleRate).toFixed(3);
      if (live) sendLiveAudio(live, samples);
      let sum = 0;
      for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
      recorder.level = Math.max(recorder.level * 0.85, Math.sqrt(sum / samples.length));
    };
    let node;
    if (ctx.audioWorklet && window.AudioWorkletNode) {
      await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
      node = new AudioWorkletNode(ctx, "pcm-recorder", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
      node.port.onmessage = (e) => onSamples(e.data);
    } else {
      node = ctx.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = (e) => onSamples(new Float32Array(e.inputBuffer.getChannelData(0)));
    }
    source.connect(node);
    node.connect(ctx.destination);   // the node outputs silence; the connection keeps it running
    recorder = { stream, ctx, source, node, chunks, live, numSamples: 0, level: 0, started: performance.now(),
                 stopping: false };
    if (live) showInterim("");
    el.recordBtn.classList.add("recording");
    el.recordLabel.textContent = "Stop";
    tickRecorder();
  }

  function tickRecorder() {
    if (!recorder || recorder.stopping) return;
    const elapsed = (performance.now() - recorder.started) / 1000;
    el.recordTime.textContent = fmtClock(elapsed);
    el.meterBar.style.width = Math.min(100, recorder.level * 300).toFixed(1) + "%";
    if (elapsed >= MAX_RECORD_S) { stopRecording(); return; }
    requestAnimationFrame(tickRecorder);
  }

  async function stopRecording() {
    const rec = recorder;
    if (!rec || rec.stopping) return;
    rec.stopping = true;
    recorder = null;
    rec.source.disconnect();
    rec.node.disconnect();
    rec.stream.getTracks().forEach((t) => t.stop());
    const rate = rec.ctx.sampleRate;
    await rec.ctx.close();
    el.recordBtn.classList.remove("recording");
    el.recordLabel.textContent = "Record";
    el.meterBar.style.width = "0";
    let samples = concat(rec.chunks);
    let outRate = rate;
    if (rate > MAX_RATE) {
      const factor = Math.ceil(rate / MAX_RATE);
      samples = decimate(samples, factor);
      outRate = rate / factor;
    }
    const live = rec.live;
    if (samples.length < outRate * 0.1) {
      if (live) closeLive(live);
      showError("Recording too short", "Nothing was recorded. Check the microphone and try again.");
      return;
    }
    const wav = encodeWav(samples, outRate);
    const stamp = new Date().toTimeString().slice(0, 8).replace(/:/g, "");
    const name = `recording-${stamp}.wav`, meta = `${fmtSeconds(samples.length / outRate)} · ${outRate / 1000} kHz`;
    // The live final is greedy; Beam + LM (or a failed socket) uploads the same samples instead.
    if (!live || live.failed || decoder() !== "greedy") {
      if (live) closeLive(live);
      setClip(wav, name, meta);
      return;
    }
    setClip(wav, name, meta, false);
    await finishLive(live, samples.length / outRate);
  }

  // --- live transcription: PCM16 over the WebSocket /v1/realtime while recording -------------
  // The socket's failure never loses a recording: it is then uploaded when it stops.
  function openLive(rate) {
    const live = { socket: null, outbox: [], pending: [], numPending: 0, numInterims: 0, rate, failed: false,
                   final: null, settle: null };
    el.transcript.dataset.interims = 0;
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/realtime?intent=transcription`;
    try {
      live.socket = new WebSocket(url, ["realtime"]);
    } catch (err) {
      live.failed = true;
      return live;
    }
    sendLive(live, { type: "transcription_session.update", session: {
      input_audio_format: "pcm16", sample_rate: rate, turn_detection: null,
      input_audio_transcription: { model: el.model.value || null } } });
    live.socket.addEventListener("open", () => {
      for (const text of live.outbox) live.socket.send(text);
      live.outbox = [];
    });
    live.socket.addEventListener("message", (e) => onLiveEvent(live, JSON.parse(e.data)));
    live.socket.addEventListener("close", () => failLive(live));
    return live;
  }

  function sendLive(live, event) {
    if (live.failed) return;
    const text = JSON.stringify(event);
    if (live.socket.readyState === WebSocket.OPEN) live.socket.send(text);
    else live.outbox.push(text);     // sent in order once the socket opens
  }

  function sendLiveAudio(live, samples, flush = false) {
    if (samples.length) { live.pending.push(samples); live.numPending += samples.length; }
    if (!live.numPending || (!flush && live.numPending < live.rate * LIVE_MESSAGE_S)) return;
    const bytes = pcm16Bytes(concat(live.pending));
    live.pending = [];
    live.numPending = 0;
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    sendLive(live, { type: "input_audio_buffer.append", audio: btoa(binary) });
  }

  function onLiveEvent(live, event) {
    if (event.type === "conversation.item.input_audio_transcription.delta") {
      if (!live.final && !live.failed) showInterim(event.transcript);
      live.numInterims += 1;
      el.transcript.dataset.interims = live.numInterims;   // lets a test wait for live updates
    } else if (event.type === "conversation.item.input_audio_transcription.completed") {
      live.final = event;
      closeLive(live);
    } else if (event.type === "error") {
      console.warn("live transcription stopped:", event.error && event.error.message);
      failLive(live);
    }
  }

  function failLive(live) {
    if (live.failed || live.final) return;
    live.failed = true;
    closeLive(live);
  }

  function closeLive(live) {
    if (live.socket && live.socket.readyState <= WebSocket.OPEN) live.socket.close(1000);
    if (live.settle) live.settle();
  }

  // Sends the rest of the audio and the commit; shows the completed transcript, else uploads.
  async function finishLive(live, durationS) {
    sendLiveAudio(live, new Float32Array(0), true);
    sendLive(live, { type: "input_audio_buffer.commit" });
    el.busy.hidden = false;
    document.body.dataset.state = "busy";
    const started = performance.now();
    await new Promise((resolve) => { live.settle = resolve; if (live.final || live.failed) resolve(); });
    el.busy.hidden = true;
    const final = live.final;
    if (!final) { transcribe(); return; }
    showResult({ text: final.transcript, words: final.words, duration: durationS, model: final.model,
                 decoder: "greedy", live: final }, performance.now() - started);
    el.statLatency.title = "from stopping the recording to the final transcript";
    document.body.dataset.state = "done";
  }

  function showInterim(text) {
    el.error.hidden = true;
    el.placeholder.hidden = true;
    el.busy.hidden = true;
    el.copyBtn.hidden = true;
    el.words.hidden = true;
    el.transcript.classList.add("interim");
    el.transcript.textContent = text;
    for (const stat of [el.statLatency, el.statDuration, el.statRtf, el.statModel, el.statDecoder]) stat.textContent = "–";
    el.rawJson.textContent = "";
    el.result.hidden = false;
    document.body.dataset.state = "live";
  }

  function concat(chunks) {
    const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
    let offset = 0;
    for (const c of chunks) { out.set(c, offset); offset += c.length; }
    return out;
  }

  function decimate(samples, factor) {   // box-filter average: enough for speech from a >48 kHz device
    const out = new Float32Array(Math.floor(samples.length / factor));
    for (let i = 0; i < out.length; i++) {
      let sum = 0;
      for (let j = 0; j < factor; j++) sum += samples[i * factor + j];
      out[i] = sum / factor;
    }
    return out;
  }

  // The WAV and the live stream quantise alike, so the upload of a recording is what was streamed.
  function pcm16Bytes(samples) {         // signed 16-bit little-endian
    const view = new DataView(new ArrayBuffer(samples.length * 2));
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Uint8Array(view.buffer);
  }

  function encodeWav(samples, rate) {    // 16-bit PCM mono RIFF/WAVE
    const header = new DataView(new ArrayBuffer(44));
    const ascii = (offset, text) => { for (let i = 0; i < text.length; i++) header.setUint8(offset + i, text.charCodeAt(i)); };
    ascii(0, "RIFF"); header.setUint32(4, 36 + samples.length * 2, true); ascii(8, "WAVE");
    ascii(12, "fmt "); header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
    header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
    header.setUint16(34, 16, true); ascii(36, "data"); header.setUint32(40, samples.length * 2, true);
    return new Blob([header.buffer, pcm16Bytes(samples)], { type: "audio/wav" });
  }

  el.recordBtn.addEventListener("click", () => (recorder ? stopRecording() : startRecording()));

  // --- settings ---------------------------------------------------------------------------
  const decoder = () => document.querySelector('input[name="decoder"]:checked').value;
  for (const radio of document.querySelectorAll('input[name="decoder"]')) {
    radio.addEventListener("change", () => { el.beamOptions.hidden = decoder() !== "beam"; });
  }
  el.transcribeBtn.addEventListener("click", () => transcribe());

  // --- transcription ------------------------------------------------------------------------
  function showError(title, message) {
    el.errorTitle.textContent = title;
    el.errorMessage.textContent = message;
    el.error.hidden = false;
  }

  async function transcribe() {
    if (!clip) return;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const form = new FormData();
    form.append("file", clip.blob, clip.name);
    if (el.model.value) form.append("model", el.model.value);
    form.append("decoder", decoder());
    form.append("word_timestamps", "true");
    if (decoder() === "beam") {
      if (el.beamWidth.value) form.append("beam_width", el.beamWidth.value);
      if (el.hotwords.value.trim()) form.append("hotwords", el.hotwords.value.trim());
    }
    el.error.hidden = true;
    el.placeholder.hidden = true;
    el.result.hidden = true;
    el.copyBtn.hidden = true;
    el.busy.hidden = false;
    el.transcribeBtn.disabled = true;
    document.body.dataset.state = "busy";
    const started = performance.now();
    try {
      const resp = await fetch("/transcribe", { method: "POST", body: form, signal: controller.signal });
      const latencyMs = performance.now() - started;
      const text = await resp.text();
      let body = null;
      try { body = JSON.parse(text); } catch (err) { /* not JSON: shown below */ }
      if (!resp.ok) {
        const error = body && body.error;
        const message = (error && error.message) || text.slice(0, 300) || resp.statusText;
        const code = error && error.code ? ` · ${error.code}` : "";
        showError(`Transcription failed (HTTP ${resp.status}${code})`, message);
        document.body.dataset.state = "error";
        return;
      }
      if (!body) throw new Error("the server's answer was not JSON");
      showResult(body, latencyMs);
      document.body.dataset.state = "done";
    } catch (err) {
      if (err.name === "AbortError") return;
      showError("Could not reach the server", `${err.message || err}. Is it still running?`);
      document.body.dataset.state = "error";
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        el.busy.hidden = true;
        el.transcribeBtn.disabled = !clip;
        if (el.result.hidden && el.error.hidden) el.placeholder.hidden = false;
      }
    }
  }

  function showResult(body, latencyMs) {
    el.transcript.classList.remove("interim");
    el.transcript.textContent = body.text || "";
    el.words.replaceChildren();
    wordButtons = [];
    for (const w of body.words || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "word";
      if (typeof w.confidence === "number" && w.confidence < LOW_CONFIDENCE) button.classList.add("low-confidence");
      const conf = typeof w.confidence === "number" ? ` · confidence ${(w.confidence * 100).toFixed(0)}%` : "";
      button.title = `${w.start.toFixed(2)}–${w.end.toFixed(2)} s${conf} · click to play from here`;
      button.dataset.start = w.start;
      button.dataset.end = w.end;
      const wordText = document.createElement("span");
      wordText.className = "word-text";
      wordText.textContent = w.word;
      const time = document.createElement("span");
      time.className = "word-time";
      time.textContent = w.start.toFixed(2) + "s";
      button.append(wordText, time);
      button.addEventListener("click", () => playFrom(w.start));
      el.words.append(button);
      wordButtons.push({ button, start: w.start, end: w.end });
    }
    el.words.hidden = wordButtons.length === 0;
    const serverTotal = body.timings && body.timings.total_s;
    el.statLatency.textContent = fmtMs(latencyMs);
    el.statLatency.title = serverTotal != null ? `server: ${fmtMs(serverTotal * 1000)}, rest is upload and network` : "";
    el.statDuration.textContent = body.duration != null ? fmtSeconds(body.duration) : "–";
    el.statRtf.textContent = body.duration ? (latencyMs / 1000 / body.duration).toFixed(3) : "–";
    el.statRtf.title = "end-to-end latency / audio duration";
    el.statModel.textContent = body.model ? `${body.model.name}@${body.model.version}` : "–";
    el.statDecoder.textContent = body.decoder || "–";
    el.rawJson.textContent = JSON.stringify(body, null, 2);
    el.result.hidden = false;
    el.copyBtn.hidden = !body.text;
  }

  // --- playback ---------------------------------------------------------------------------
  function playFrom(seconds) {
    el.player.currentTime = seconds;
    const playing = el.player.play();
    if (playing && playing.catch) playing.catch(() => {});
    highlight();
  }

  function highlight() {
    const t = el.player.currentTime;
    for (const w of wordButtons) w.button.classList.toggle("playing", !el.player.paused && t >= w.start && t < w.end);
  }
  el.player.addEventListener("timeupdate", highlight);
  el.player.addEventListener("pause", highlight);
  el.player.addEventListener("play", function frame() {
    highlight();
    if (!el.player.paused) requestAnimationFrame(frame);
  });

  el.copyBtn.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(el.transcript.textContent);
      el.copyBtn.textContent = "Copied";
    } catch (err) {
      el.copyBtn.textContent = "Copy failed";
    }
    setTimeout(() => { el.copyBtn.textContent = "Copy text"; }, 1500);
  });

  // --- start ------------------------------------------------------------------------------
  pollHealth();
  loadModels();
  setInterval(pollHealth, 5000);
})();
