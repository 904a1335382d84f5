//! One stream's anomaly detector (DESIGN §3): streaming, O(1) work and fixed memory per sample,
//! robust to noise, heavy tails and seasonality, with a score that is a calibrated likelihood.
//!
//! Each sample gives up to four statistics:
//! - **level**: how far the last 1, 5 and 20 samples' means are from the long-run mean, in
//!   standard errors (spikes, shifts, bursts);
//! - **season**: the same for the residual from the time-of-day profile (a daily peak that
//!   does not come, a night that is busy);
//! - **density**: how rarely the stream visits the value's part of its range (a value between
//!   two usual levels);
//! - **silence**, in a stream that spikes (20 gaps between runs of samples 4σ above both
//!   the recent and the long-run mean): how long since its last spike (a batch job that
//!   stopped running).
//!
//! Each statistic's tail probability is read off its own history ([`TailRank`]), so what is
//! unusual is judged against what is usual *for this stream*. The sample's probability p is
//! the smallest of them (Bonferroni-corrected over the statistics the stream has), or, when
//! a short burst of moderately unusual values is rarer than any one of them, the burst's (the
//! mean surprise of the values' statistics over the last 3 samples, ranked the same way). The score is −log₁₀ p / 5, clipped to [0, 1]: 0.45 is
//! p ≈ 0.0056, 1.0 is p ≤ 10⁻⁵. A sample is anomalous when its score reaches the threshold.
//!
//! An *alert* is the first anomalous sample of an episode: `alert` equals the score there,
//! and is held just under the threshold for the next `rest` samples, so an episode alerts
//! once (what the NAB benchmark scores, and what a pager wants); `anomaly` stays true for as
//! long as the samples are anomalous (what a policy's `for:` counts).
//!
//! Pure: time is the sample's timestamp; nothing reads a clock.

use super::features::{Density, Moments, Recent, Season, Silence, WINDOWS};
use super::tail::TailRank;
use serde::{Deserialize, Serialize};

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Score at which a sample is anomalous (default 0.45: tail probability 10^(−5 × 0.45) ≈
    /// 0.0056 among the stream's own history).
    pub threshold: f64,
    /// Samples before anything is scored (default 30).
    pub warmup: u32,
    /// Samples after an alert before the next (default 100).
    pub rest: u32,
    /// Length of the seasonal cycle in seconds (default one day; 0 disables seasonality).
    pub season_s: u64,
    /// Bins per cycle (default 96: 15 minutes each for a day).
    pub season_bins: u32,
    /// Samples the long-run mean and variance remember (default 2000).
    pub memory: u32,
    /// Judges the silences of a stream that spikes (default true): off where spikes are bad
    /// news and their stopping is good news (errors, slow requests).
    pub silence: bool,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: 0.45,
            warmup: 30,
            rest: 100,
            season_s: 86_400,
            season_bins: 96,
            memory: 2000,
            silence: true,
        }
    }
}

impl DetectorConfig {
    /// Why the settings cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!("threshold: {} is not in (0, 1]", self.threshold));
        }
        if self.season_s > 0 && !(1..=10_080).contains(&self.season_bins) {
            return Err(format!(
                "season_bins: {} is not between 1 and 10080",
                self.season_bins
            ));
        }
        if self.memory < 10 {
            return Err(format!(
                "memory: {} samples is too short (10 or more)",
                self.memory
            ));
        }
        Ok(())
    }
}

/// The verdict on one sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// What was expected (the time-of-day profile's value once learned, else the long-run
    /// mean).
    pub expected: f64,
    /// Tail probability of a sample at least this unusual, among the stream's own history.
    pub p: f64,
    /// Anomaly score in [0, 1]: −log₁₀ p / 5.
    pub score: f64,
    /// The score, held under the threshold for `rest` samples after an alert.
    pub alert: f64,
    /// The score reached the threshold.
    pub anomaly: bool,
}

/// Seasonal profile smoothing per visit of a bin.
const SEASON_ALPHA: f64 = 0.05;
/// Samples in a burst.
const BURST: usize = 3;
/// −log₁₀ p that maps to a score of 1.
const SCORE_DECADES: f64 = 5.0;

/// One stream's detector state: about 4 KiB in memory with the default 96 seasonal bins, and
/// 0.6 KiB more when it judges silences (`examples/detector_size.rs` prints its saved size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    cfg: DetectorConfig,
    n: u64,
    level: Moments,
    recent: Recent,
    season: Season,
    residual: Moments,
    recent_residuals: Recent,
    density: Density,
    /// Present when the settings judge silences.
    silence: Option<Silence>,
    /// Tail histories of the level, season and density statistics, and of the burst.
    ranks: [TailRank; 4],
    surprises: Recent,
    quiet: u32,
    last_expected: f64,
    /// Samples seen when the seasonal cycle last changed (0: never): the seasonal statistic
    /// warms up again from there, as a new detector's statistics do.
    #[serde(default)]
    season_since: u64,
}

impl Detector {
    /// A detector with no history.
    pub fn new(cfg: DetectorConfig) -> Self {
        let bins = if cfg.season_s == 0 {
            0
        } else {
            cfg.season_bins.max(1) as usize
        };
        Self {
            cfg,
            n: 0,
            level: Moments::default(),
            recent: Recent::default(),
            season: Season::new(bins),
            residual: Moments::default(),
            recent_residuals: Recent::default(),
            density: Density::default(),
            silence: cfg.silence.then(Silence::default),
            ranks: Default::default(),
            surprises: Recent::default(),
            quiet: 0,
            last_expected: 0.0,
            season_since: 0,
        }
    }

    /// Takes on `cfg`, the watch's settings now (a detector read from a checkpoint or taken
    /// over from another processor was saved with the settings of its time). The threshold,
    /// warm-up, rest, memory and silences apply from the next sample on, and what was learned
    /// is kept. When the seasonal cycle changed (its length, or its bins), what was learned
    /// against the old cycle is forgotten — the profile, the residuals from it and their tail
    /// history — and the rest kept: the level, the density, silences and the other statistics'
    /// histories do not depend on the cycle, so the detector goes on scoring without a new
    /// warm-up while the new profile is learned.
    pub fn follow(&mut self, cfg: DetectorConfig) {
        let cycle =
            |c: &DetectorConfig| (c.season_s, if c.season_s == 0 { 0 } else { c.season_bins });
        if cycle(&cfg) != cycle(&self.cfg) {
            let fresh = Detector::new(cfg);
            self.season = fresh.season;
            self.residual = fresh.residual;
            self.recent_residuals = fresh.recent_residuals;
            self.ranks[1] = TailRank::default();
            self.season_since = self.n;
        }
        self.judge_silences(cfg.silence);
        // (A rest under way ends by the new rest at the latest.)
        self.quiet = self.quiet.min(cfg.rest);
        self.cfg = cfg;
    }

    /// Starts or stops judging silences: a detector saved before silences were judged (its
    /// settings read as the default, true, with no silence state) or by settings that did not
    /// judge them starts learning its gaps now.
    pub fn judge_silences(&mut self, on: bool) {
        self.cfg.silence = on;
        match (on, self.silence.is_some()) {
            (true, false) => self.silence = Some(Silence::default()),
            (false, true) => self.silence = None,
            _ => {}
        }
    }

    /// Whether it judges silences (keeps a silence state).
    pub fn judges_silences(&self) -> bool {
        self.silence.is_some()
    }

    /// Its settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    fn bin(&self, t_s: u64) -> Option<usize> {
        if self.season.is_empty() {
            return None;
        }
        let within = t_s % self.cfg.season_s;
        Some((within * self.season.bins() as u64 / self.cfg.season_s) as usize)
    }

    /// Scores `value` observed at `t_s` (Unix seconds), then learns from it. A non-finite
    /// value is not scored and teaches nothing.
    pub fn observe(&mut self, t_s: u64, value: f64) -> Scored {
        if !value.is_finite() {
            return Scored {
                expected: self.last_expected,
                p: 1.0,
                score: 0.0,
                alert: 0.0,
                anomaly: false,
            };
        }
        self.n += 1;
        let alpha = 1.0 / f64::from(self.cfg.memory.max(1));
        let keep = WINDOWS[WINDOWS.len() - 1];
        let mut stats: [Option<f64>; 3] = [None; 3];

        // The silence reads the samples before this one and the long-run moments before it
        // (only in a detector that judges silences).
        let p_silence = self.silence.as_mut().and_then(|s| {
            let recent_mean = (!self.recent.is_empty()).then(|| self.recent.mean());
            let sd = if self.level.n >= 2 {
                self.level.var.sqrt()
            } else {
                0.0
            };
            let memory = u64::from(self.cfg.memory);
            s.observe(value, recent_mean, self.level.mean, sd, memory)
        });
        let judged = self.silence.as_ref().is_some_and(Silence::judged);
        self.recent.push(value, keep);
        stats[0] = self.recent.deviation(&self.level);
        let mut expected = self.level.mean;
        let mut tests = if judged { 3.0 } else { 2.0 };
        self.level.update(value, alpha);

        let bin = self.bin(t_s);
        if let Some(b) = bin {
            if let Some(s) = self.season.get(b) {
                let r = value - s;
                self.recent_residuals.push(r, keep);
                stats[1] = self.recent_residuals.deviation(&self.residual);
                self.residual.update(r, alpha);
            }
            if let Some(e) = self.season.expected(b) {
                expected = e;
            }
            self.season.learn(b, value, SEASON_ALPHA);
        }
        if self.n == 1 {
            expected = value;
        }
        self.last_expected = expected;

        if let Some(s) = self.density.observe(value)
            && self.density.n > 20.0
        {
            stats[2] = Some(s);
        }

        if bin.is_some() {
            tests += 1.0;
        }
        let mut p_values: f64 = 1.0;
        // The seasonal statistic's history, new after a change of cycle, is only learned from
        // for `warmup` samples (a tail read off a few values would call anything rare).
        // (A detector whose cycle never changed warms up as a whole, before it scores.)
        let season_warm =
            self.season_since == 0 || self.n >= self.season_since + u64::from(self.cfg.warmup);
        for (i, (rank, stat)) in self.ranks.iter_mut().zip(stats).enumerate() {
            let Some(z) = stat else { continue };
            if i == 1 && !season_warm {
                rank.add(z);
                continue;
            }
            let pz = if z > 0.0 { rank.p(z) } else { 1.0 };
            p_values = p_values.min(pz * tests);
            rank.add(z);
        }
        // A burst: the mean surprise of the values over the last few samples, ranked like the
        // statistics (a silence is a run of samples already: it has no burst of its own).
        self.surprises.push(-p_values.min(1.0).log10(), BURST);
        let p = p_silence.map_or(p_values, |ps| p_values.min(ps * tests));
        let burst = self.surprises.mean();
        let p_burst = if burst > 0.0 {
            self.ranks[3].p(burst)
        } else {
            1.0
        };
        self.ranks[3].add(burst);
        let p = (2.0 * p.min(p_burst)).min(1.0);

        let score = if self.n >= u64::from(self.cfg.warmup) {
            (-p.log10() / SCORE_DECADES).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let threshold = self.cfg.threshold;
        let alert = if self.quiet > 0 {
            self.quiet -= 1;
            score.min(threshold * 0.99)
        } else {
            if score >= threshold {
                self.quiet = self.cfg.rest;
            }
            score
        };
        Scored {
            expected,
            p,
            score,
            alert,
            anomaly: score >= threshold,
        }
    }
}
