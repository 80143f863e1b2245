"""Riva's realtime transcription API on the /v1/realtime socket: the session fields riva.client.realtime (Riva's
realtime_asr_client.py) sends, in the fields service.realtime_ws reads.

Riva's client first POSTs /v1/realtime/transcription_sessions for the server's defaults, connects the socket,
sends those defaults back with its overrides in a ``transcription_session.update``, appends audio (a file's bytes,
WAV header included, as ``input_audio_format: "none"``, or microphone PCM as ``"pcm16"``), and ends with
``input_audio_buffer.done``; it reads ``completed`` events until one has ``is_last_result``.
"""

from __future__ import annotations

from service.domain import RequestError

# A file's bytes, its header saying the format (service.wav_stream), as Riva's client streams a .wav file.
FILE_FORMAT = "none"


def default_session(session_id: str, model: str, sample_rate: int) -> dict:
    """What POST /v1/realtime/transcription_sessions answers: the session a new socket starts with."""
    return {"id": session_id, "object": "realtime.transcription_session", "input_audio_format": "pcm16",
            "input_audio_transcription": {"language": "en-US", "model": model, "prompt": ""},
            "input_audio_params": {"sample_rate_hz": sample_rate, "num_channels": 1},
            "recognition_config": {"max_alternatives": 1, "enable_automatic_punctuation": False,
                                   "enable_word_time_offsets": True, "enable_profanity_filter": False,
                                   "enable_verbatim_transcripts": True},
            "turn_detection": None, "client_secret": None}


def from_riva_session(session: dict) -> dict:
    """Riva's extra session fields in the ones realtime_ws reads (sample_rate, channels, hotwords, turn_detection);
    fields it shares with OpenAI's beta session (input_audio_format, input_audio_transcription) stay as they are."""
    out = {key: session[key] for key in ("input_audio_format", "input_audio_transcription", "turn_detection")
           if key in session}
    params = _section(session, "input_audio_params")
    if "sample_rate_hz" in params:
        out["sample_rate"] = params["sample_rate_hz"]
    if "num_channels" in params:
        out["channels"] = params["num_channels"]
    if _section(session, "recognition_config").get("enable_automatic_punctuation"):
        raise RequestError("enable_automatic_punctuation is not supported: transcripts have no punctuation")
    if _section(session, "speaker_diarization").get("enable_speaker_diarization"):
        raise RequestError("speaker diarization is not supported")
    boosting = _section(session, "word_boosting")
    if boosting.get("enable_word_boosting"):
        out["hotwords"] = hotwords = []
        for entry in boosting.get("word_boosting_list") or []:
            phrases, boost = (entry.get("phrases"), entry.get("boost", 0.0)) if isinstance(entry, dict) else (0, 0)
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases) or \
                    isinstance(boost, bool) or not isinstance(boost, (int, float)):
                raise RequestError("word_boosting_list entries need 'phrases' (strings) and a numeric 'boost'")
            hotwords += [(phrase, float(boost)) for phrase in phrases]
    stop_history_ms = _section(session, "endpointing_config").get("stop_history")
    if stop_history_ms:
        if isinstance(stop_history_ms, bool) or not isinstance(stop_history_ms, int) or stop_history_ms < 0:
            raise RequestError("endpointing_config.stop_history must be a whole number of milliseconds")
        out["turn_detection"] = {"type": "server_vad", "silence_duration_ms": stop_history_ms}
    return out


def _section(session: dict, key: str) -> dict:
    value = session.get(key) or {}
    if not isinstance(value, dict):
        raise RequestError(f"{key} must be an object")
    return value


def is_riva_session(session: dict) -> bool:
    return any(key in session for key in ("input_audio_params", "recognition_config", "word_boosting",
                                          "endpointing_config"))
