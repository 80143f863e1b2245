// AudioWorklet processor of the web page's recorder: posts every block of microphone samples
// (mono, float32, at the AudioContext's rate) to the page, which streams them as PCM16 to the
// live WebSocket and encodes them as WAV.
// Browsers' MediaRecorder produces WebM/Opus, which the server's decoder (libsndfile) cannot read.
class PcmRecorder extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      this.port.postMessage(channel.slice(0));
    }
    return true;
  }
}

registerProcessor("pcm-recorder", PcmRecorder);
