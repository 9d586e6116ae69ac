//! Text to speech: espeak-ng through its C library, with phoneme events at exact sample positions.
//!
//! espeak-ng keeps global state and is not thread-safe, so every call goes through one process-wide
//! lock; the show runs synthesis on its own thread (see `director`), never on the async runtime.
//! Invariant: a [`Speech`]'s phoneme positions index its own samples, at the pipeline's rate — the
//! voice's native 22.05 kHz output is resampled here, and the positions are scaled with it.

use std::ffi::{CString, c_int, c_short, c_void};
use std::sync::Mutex;

use espeakng_sys as es;
use rubato::{FftFixedIn, Resampler};

use crate::lipsync::PhonemeMark;

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("espeak-ng could not start (is the espeak-ng-data package installed?)")]
    Init,
    #[error("espeak-ng has no voice `{0}` (list them with `espeak-ng --voices`)")]
    UnknownVoice(String),
    #[error("text contains a NUL byte")]
    NulInText,
    #[error("espeak-ng failed to synthesise (code {0})")]
    Synth(i32),
    #[error("resampling failed: {0}")]
    Resample(String),
}

/// One utterance's audio (mono, 16-bit) and the phonemes in it.
#[derive(Debug, Clone, Default)]
pub struct Speech {
    pub text: String,
    pub sample_rate: u32,
    pub samples: Vec<i16>,
    pub phonemes: Vec<PhonemeMark>,
}

impl Speech {
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate as f64
    }
}

/// An espeak-ng voice with its settings, producing audio at `output_rate`.
#[derive(Debug, Clone)]
pub struct EspeakVoice {
    pub name: String,
    pub rate_wpm: u32,
    pub pitch: u32,
    pub output_rate: u32,
}

/// espeak-ng's sample rate once initialised (0 = not yet). Guarded: espeak-ng is one global engine.
static ENGINE: Mutex<u32> = Mutex::new(0);

/// What the synthesis callback fills, reached through espeak's `user_data` pointer.
#[derive(Default)]
struct Collector {
    samples: Vec<i16>,
    phonemes: Vec<PhonemeMark>,
}

unsafe extern "C" fn collect(wav: *mut c_short, count: c_int, events: *mut es::espeak_EVENT) -> c_int {
    // SAFETY: espeak-ng passes an event list terminated by LIST_TERMINATED whose `user_data` is the
    // pointer given to `espeak_Synth`, a `Collector` that outlives the synchronous call.
    unsafe {
        if events.is_null() || (*events).user_data.is_null() {
            return 0;
        }
        let out = &mut *((*events).user_data as *mut Collector);
        let mut ev = events;
        while (*ev).type_ != es::espeak_EVENT_TYPE_espeakEVENT_LIST_TERMINATED {
            if (*ev).type_ == es::espeak_EVENT_TYPE_espeakEVENT_PHONEME {
                let raw = (*ev).id.string;
                let bytes: Vec<u8> = raw.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
                out.phonemes.push(PhonemeMark {
                    phoneme: String::from_utf8_lossy(&bytes).into_owned(),
                    start_sample: (*ev).sample.max(0) as u64,
                });
            }
            ev = ev.add(1);
        }
        if !wav.is_null() && count > 0 {
            out.samples.extend_from_slice(std::slice::from_raw_parts(wav, count as usize));
        }
    }
    0
}

impl EspeakVoice {
    /// Checks that espeak-ng starts and knows this voice.
    pub fn check(&self) -> Result<(), TtsError> {
        let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        self.prepare(&mut engine).map(|_| ())
    }

    /// Initialises espeak-ng once per process and selects this voice; returns the native rate.
    fn prepare(&self, engine: &mut u32) -> Result<u32, TtsError> {
        if *engine == 0 {
            // SAFETY: called under the ENGINE lock; a NULL path means the default data directory.
            let rate = unsafe {
                es::espeak_Initialize(
                    es::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_SYNCHRONOUS,
                    200,
                    std::ptr::null(),
                    es::espeakINITIALIZE_PHONEME_EVENTS as c_int,
                )
            };
            if rate <= 0 {
                return Err(TtsError::Init);
            }
            // SAFETY: `collect` matches t_espeak_callback.
            unsafe { es::espeak_SetSynthCallback(Some(collect)) };
            *engine = rate as u32;
        }
        let name = CString::new(self.name.as_str()).map_err(|_| TtsError::UnknownVoice(self.name.clone()))?;
        // SAFETY: under the ENGINE lock, with a valid C string.
        unsafe {
            if es::espeak_SetVoiceByName(name.as_ptr()) != es::espeak_ERROR_EE_OK {
                return Err(TtsError::UnknownVoice(self.name.clone()));
            }
            es::espeak_SetParameter(es::espeak_PARAMETER_espeakRATE, self.rate_wpm as c_int, 0);
            es::espeak_SetParameter(es::espeak_PARAMETER_espeakPITCH, self.pitch as c_int, 0);
        }
        Ok(*engine)
    }

    /// Synthesises `text` completely. Blocking; run it off the async runtime.
    pub fn synthesize(&self, text: &str) -> Result<Speech, TtsError> {
        let ctext = CString::new(text).map_err(|_| TtsError::NulInText)?;
        let mut collector = Collector::default();
        let native_rate = {
            let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
            let native_rate = self.prepare(&mut engine)?;
            // SAFETY: synchronous mode: the callback runs inside this call, while `collector`
            // and `ctext` are alive and the ENGINE lock is held.
            let err = unsafe {
                es::espeak_Synth(
                    ctext.as_ptr() as *const c_void,
                    text.len() + 1,
                    0,
                    es::espeak_POSITION_TYPE_POS_CHARACTER,
                    0,
                    es::espeakCHARS_UTF8,
                    std::ptr::null_mut(),
                    &mut collector as *mut Collector as *mut c_void,
                )
            };
            if err != es::espeak_ERROR_EE_OK {
                return Err(TtsError::Synth(err as i32));
            }
            native_rate
        };
        let samples = resample(&collector.samples, native_rate, self.output_rate)?;
        let scale = |s: u64| s * self.output_rate as u64 / native_rate as u64;
        let mut phonemes: Vec<PhonemeMark> = collector
            .phonemes
            .into_iter()
            .map(|p| PhonemeMark { start_sample: scale(p.start_sample).min(samples.len() as u64), ..p })
            .collect();
        phonemes.sort_by_key(|p| p.start_sample);
        Ok(Speech { text: text.to_string(), sample_rate: self.output_rate, samples, phonemes })
    }
}

/// Band-limited resampling of mono 16-bit audio, aligned so output sample 0 is input sample 0.
pub fn resample(input: &[i16], from: u32, to: u32) -> Result<Vec<i16>, TtsError> {
    if from == to || input.is_empty() {
        return Ok(input.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| TtsError::Resample(e.to_string());
    const CHUNK: usize = 1024;
    let mut resampler = FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK, 2, 1).map_err(|e| err(&e))?;
    let delay = resampler.output_delay();
    let wanted = (input.len() as u64 * to as u64).div_ceil(from as u64) as usize;
    let mut out: Vec<f32> = Vec::with_capacity(wanted + delay + CHUNK * 3);
    let mut chunk = vec![0f32; CHUNK];
    let mut pos = 0;
    // Feed zeros past the end until the delayed tail has come out.
    while out.len() < wanted + delay {
        for (i, slot) in chunk.iter_mut().enumerate() {
            *slot = input.get(pos + i).map_or(0.0, |s| *s as f32 / 32768.0);
        }
        pos += CHUNK;
        let produced = resampler.process(&[&chunk], None).map_err(|e| err(&e))?;
        out.extend_from_slice(&produced[0]);
    }
    Ok(out[delay..delay + wanted].iter().map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> EspeakVoice {
        EspeakVoice { name: "en-us".into(), rate_wpm: 160, pitch: 50, output_rate: 48_000 }
    }

    #[test]
    fn phoneme_positions_fall_inside_the_audio() {
        let speech = voice().synthesize("Buy my baby a map.").unwrap();
        assert!(speech.duration_secs() > 0.8 && speech.duration_secs() < 3.0, "{}", speech.duration_secs());
        let names: Vec<&str> = speech.phonemes.iter().map(|p| p.phoneme.as_str()).collect();
        assert!(names.iter().filter(|p| ["b", "m", "p"].contains(p)).count() >= 5, "{names:?}");
        let last = speech.phonemes.last().unwrap().start_sample;
        assert!(last < speech.samples.len() as u64);
        assert!(speech.phonemes.windows(2).all(|w| w[0].start_sample <= w[1].start_sample));
    }

    #[test]
    fn unknown_voice_is_an_error_not_a_panic() {
        let v = EspeakVoice { name: "xx-nonexistent".into(), ..voice() };
        assert!(matches!(v.synthesize("hello"), Err(TtsError::UnknownVoice(_))));
        assert!(matches!(voice().synthesize("a\0b"), Err(TtsError::NulInText)));
    }

    #[test]
    fn resampling_keeps_length_and_timing() {
        // A click at input sample 2205 (100 ms at 22.05 kHz) must land at 4800 at 48 kHz.
        let mut input = vec![0i16; 22_050];
        input[2205] = 20_000;
        let out = resample(&input, 22_050, 48_000).unwrap();
        assert_eq!(out.len(), 48_000);
        let peak = out.iter().enumerate().max_by_key(|(_, s)| s.unsigned_abs()).unwrap().0;
        assert!((peak as i64 - 4800).abs() <= 2, "peak at {peak}");
    }
}
