//! Lip-sync: phonemes with sample positions → a viseme track → the mouth pose at any sample.
//!
//! The viseme set is Rhubarb Lip Sync's nine mouth shapes, which cartoon and vector hosts use:
//!
//! | viseme | mouth | sounds |
//! |---|---|---|
//! | A | closed lips | P, B, M |
//! | B | slightly open, teeth together | most consonants (K, S, T, N, D, G, H, Y, TH), EE, IH |
//! | C | open | EH, AE, AH, schwa |
//! | D | wide open | AA, AY, AW |
//! | E | slightly rounded | AO, ER, R, OY |
//! | F | puckered | UW, OW, W, OO |
//! | G | upper teeth on lower lip | F, V |
//! | H | tongue raised | L |
//! | X | rest (silence) | pauses |
//!
//! Invariant: the track is sorted by start sample and never holds two neighbouring keys with the
//! same viseme. A change of shape is a crossfade (at most [`BLEND_MS`] wide, and never wider than
//! half of either neighbour) that starts ahead of the phoneme onset, as lips do: the new shape is
//! three quarters reached at the onset and complete a quarter of the blend after it, well within
//! one video frame at 30 fps.

use std::fmt;

/// Width of a crossfade between two mouth shapes.
pub const BLEND_MS: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viseme {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    H,
    X,
}

impl Viseme {
    pub const ALL: [Viseme; 9] =
        [Viseme::A, Viseme::B, Viseme::C, Viseme::D, Viseme::E, Viseme::F, Viseme::G, Viseme::H, Viseme::X];

    pub fn letter(self) -> char {
        match self {
            Viseme::A => 'A',
            Viseme::B => 'B',
            Viseme::C => 'C',
            Viseme::D => 'D',
            Viseme::E => 'E',
            Viseme::F => 'F',
            Viseme::G => 'G',
            Viseme::H => 'H',
            Viseme::X => 'X',
        }
    }

    pub fn index(self) -> usize {
        Viseme::ALL.iter().position(|v| *v == self).expect("every viseme is in ALL")
    }

    /// The mouth shape for an espeak-ng phoneme mnemonic (English phoneme set).
    ///
    /// Stress and length marks are ignored; unknown phonemes fall back to B, the neutral
    /// "speaking" shape, which is never wrong by much.
    pub fn for_espeak_phoneme(phoneme: &str) -> Viseme {
        let p = phoneme.trim_start_matches(['\'', ',', '%', '=']);
        if p.is_empty() || p.starts_with('_') {
            return Viseme::X;
        }
        // Diphthongs and r-coloured vowels take the shape of their first part.
        match p {
            "p" | "b" | "m" => return Viseme::A,
            "f" | "v" => return Viseme::G,
            "l" | "@L" | "L" => return Viseme::H,
            "w" | "W" => return Viseme::F,
            "r" | "r-" | "3:" | "3" | "@r" => return Viseme::E,
            _ => {}
        }
        let first = p.chars().next().unwrap_or('_');
        match first {
            'A' | 'a' if p.starts_with("aI") || p.starts_with("aU") || p.starts_with('A') => Viseme::D,
            'a' | 'E' | 'e' | 'V' | '@' => Viseme::C,
            'O' | '0' => Viseme::E,
            'o' | 'u' | 'U' => Viseme::F,
            'i' | 'I' | 'j' => Viseme::B,
            _ => Viseme::B,
        }
    }
}

impl fmt::Display for Viseme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A phoneme as the voice produced it, at a sample position in the utterance's audio.
#[derive(Debug, Clone, PartialEq)]
pub struct PhonemeMark {
    pub phoneme: String,
    pub start_sample: u64,
}

/// The mouth at one instant: a crossfade `from` → `to`, `mix` in [0, 1] (1 = fully `to`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MouthPose {
    pub from: Viseme,
    pub to: Viseme,
    pub mix: f32,
}

impl MouthPose {
    pub const REST: MouthPose = MouthPose { from: Viseme::X, to: Viseme::X, mix: 1.0 };

    pub fn steady(v: Viseme) -> MouthPose {
        MouthPose { from: v, to: v, mix: 1.0 }
    }

    /// The shape that dominates the pose.
    pub fn dominant(&self) -> Viseme {
        if self.mix >= 0.5 { self.to } else { self.from }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisemeKey {
    pub start_sample: u64,
    pub viseme: Viseme,
}

/// Mouth shapes over one utterance, in samples of the utterance's audio.
#[derive(Debug, Clone, Default)]
pub struct VisemeTrack {
    keys: Vec<VisemeKey>,
    end_sample: u64,
    blend_half: u64,
}

impl VisemeTrack {
    /// Builds the track for phonemes sorted by start sample, in audio of `len` samples at `rate`.
    pub fn from_phonemes(phonemes: &[PhonemeMark], len: u64, rate: u32) -> VisemeTrack {
        let mut keys: Vec<VisemeKey> = Vec::with_capacity(phonemes.len() + 1);
        let mut push = |start: u64, viseme: Viseme| match keys.last_mut() {
            Some(last) if last.viseme == viseme => {}
            Some(last) if last.start_sample == start => last.viseme = viseme,
            _ => keys.push(VisemeKey { start_sample: start, viseme }),
        };
        push(0, Viseme::X);
        for p in phonemes {
            push(p.start_sample.min(len), Viseme::for_espeak_phoneme(&p.phoneme));
        }
        VisemeTrack { keys, end_sample: len, blend_half: BLEND_MS * rate as u64 / 2000 }
    }

    pub fn keys(&self) -> &[VisemeKey] {
        &self.keys
    }

    /// The pose at `sample` (utterance-relative). Past the end the mouth is at rest.
    pub fn pose_at(&self, sample: u64) -> MouthPose {
        if self.keys.is_empty() || sample >= self.end_sample {
            return MouthPose::REST;
        }
        // Index of the key in force: the last key starting at or before `sample`.
        let i = self.keys.partition_point(|k| k.start_sample <= sample).saturating_sub(1);
        let duration = |j: usize| {
            let end = self.keys.get(j + 1).map_or(self.end_sample, |k| k.start_sample);
            end - self.keys[j].start_sample
        };
        // A transition into key j spans [start_j - 3h/2, start_j + h/2]: lips move ahead of the
        // sound (a /b/ is silent while the lips close), so the shape is 3/4 reached at the onset.
        let transition = |j: usize| -> Option<MouthPose> {
            if j == 0 || j >= self.keys.len() {
                return None;
            }
            let h = self.blend_half.min(duration(j - 1) / 2).min(duration(j) / 2);
            let onset = self.keys[j].start_sample;
            let (lead, lag) = (3 * h / 2, h / 2);
            if h == 0 || sample + lead < onset || sample >= onset + lag {
                return None;
            }
            let mix = (sample + lead - onset) as f32 / (lead + lag) as f32;
            Some(MouthPose { from: self.keys[j - 1].viseme, to: self.keys[j].viseme, mix })
        };
        transition(i).or_else(|| transition(i + 1)).unwrap_or(MouthPose::steady(self.keys[i].viseme))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(p: &str, s: u64) -> PhonemeMark {
        PhonemeMark { phoneme: p.into(), start_sample: s }
    }

    #[test]
    fn bilabials_close_labiodentals_bite() {
        for p in ["p", "b", "m"] {
            assert_eq!(Viseme::for_espeak_phoneme(p), Viseme::A);
        }
        assert_eq!(Viseme::for_espeak_phoneme("f"), Viseme::G);
        assert_eq!(Viseme::for_espeak_phoneme("A:"), Viseme::D);
        assert_eq!(Viseme::for_espeak_phoneme("aI"), Viseme::D);
        assert_eq!(Viseme::for_espeak_phoneme("u:"), Viseme::F);
        assert_eq!(Viseme::for_espeak_phoneme("_:"), Viseme::X);
        assert_eq!(Viseme::for_espeak_phoneme("'E"), Viseme::C);
    }

    #[test]
    fn crossfade_leads_the_onset() {
        // 1000 Hz so samples are milliseconds: a 50 ms blend from 37 ms before to 13 ms after.
        let t = VisemeTrack::from_phonemes(&[mark("m", 100), mark("A:", 300)], 600, 1000);
        assert_eq!(t.pose_at(50), MouthPose::steady(Viseme::X));
        let at_onset = t.pose_at(300);
        assert_eq!((at_onset.from, at_onset.to), (Viseme::A, Viseme::D));
        assert!((at_onset.mix - 0.755).abs() < 0.01, "{at_onset:?}");
        assert_eq!(t.pose_at(313), MouthPose::steady(Viseme::D));
        let before = t.pose_at(270);
        assert_eq!((before.from, before.to), (Viseme::A, Viseme::D));
        assert!(before.mix < 0.5);
        assert_eq!(t.pose_at(262), MouthPose::steady(Viseme::A));
        assert_eq!(t.pose_at(200), MouthPose::steady(Viseme::A));
        assert_eq!(t.pose_at(600), MouthPose::REST);
    }

    #[test]
    fn blends_never_exceed_half_a_short_phoneme() {
        let t = VisemeTrack::from_phonemes(&[mark("p", 100), mark("a", 110), mark("t", 200)], 300, 1000);
        // "p" lasts 10 ms: each blend is at most 10 ms wide, so "a" dominates from ~107.
        assert_eq!(t.pose_at(109).dominant(), Viseme::C);
        assert_eq!(t.pose_at(104).dominant(), Viseme::A);
    }

    #[test]
    fn repeated_shapes_merge() {
        let t = VisemeTrack::from_phonemes(&[mark("m", 10), mark("b", 50), mark("p", 90)], 200, 1000);
        assert_eq!(t.keys().len(), 2);
    }
}
