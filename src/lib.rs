//! zhubo (主播): a 24/7 digital-human live-streaming host.
//!
//! A show script is spoken by a lip-synced avatar and streamed to RTMP ingests and recordings.
//! The stages, each in its own module, in the order media flows:
//!
//! - [`config`], [`script`]: the user's files, parsed with located errors ([`diagnostic`]);
//! - [`director`]: what is said next (the script loop), synthesised ahead on its own thread;
//! - [`tts`]: espeak-ng speech with phoneme timing; [`lipsync`]: phonemes → mouth shapes;
//! - [`avatar`]: the host drawn from SVG layers into I420 frames;
//! - [`media`]: the one media clock (audio samples) and the encoder graph it feeds;
//! - [`output`]: encoded media fanned out to supervised, self-healing outputs;
//! - [`show`]: the stages wired together; [`shutdown`]: the tree every task belongs to.

pub mod assets;
pub mod avatar;
pub mod bench;
pub mod cli;
pub mod config;
pub mod diagnostic;
pub mod director;
pub mod lipsync;
pub mod media;
pub mod output;
pub mod script;
pub mod show;
pub mod shutdown;
pub mod tts;
