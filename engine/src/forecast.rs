//! Capacity forecast (pattern 1, DESIGN §10): per service, the hourly request rate (or usage) as a
//! trend plus an hour-of-day and a day-of-week profile. The trend is a Theil–Sen line (median
//! of pairwise slopes) through the last [`DAYS`] daily means (which the daily cycle does not disturb); the hour's
//! profile is its deviation from that line, the day's the day mean's, each smoothed over
//! visits. Updated once per hour of engine time in O(1), with fixed memory (about 70 numbers).
//! `days_to_limit` is when the forecast, its daily peaks included, first reaches the service's
//! `capacity:` limit (none within a year: never). A usage metric ([`crate::usage`]: CPU
//! seconds per second, memory in use…) with a `capacity:` limit is forecast the same way.
//!
//! Pure: time is the sample's hour; nothing reads a clock.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Daily means the trend is fitted to.
pub const DAYS: usize = 28;
/// Complete days before anything is forecast.
const MIN_DAYS: usize = 3;
/// Hour-of-day profile smoothing per visit.
const HOURLY: f64 = 0.2;
/// Day-of-week profile smoothing per visit.
const WEEKLY: f64 = 0.3;
/// Hours looked ahead for `days_to_limit`.
pub const HORIZON_HOURS: u64 = 365 * 24;

/// One series' model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    /// The last complete days' (Unix day, mean).
    days: VecDeque<(u64, f64)>,
    /// The day being summed: (Unix day, sum, hours).
    today: Option<(u64, f64, u32)>,
    daily: [f64; 24],
    weekly: [f64; 7],
    /// The fitted line: value at Unix day `x` (fractional) is `intercept + slope × x`.
    slope: f64,
    intercept: f64,
    /// Hours learned.
    pub hours: u64,
    last_hour: Option<u64>,
}

fn day_of_week(day: u64) -> usize {
    // 1970-01-01 was a Thursday: day-of-week 0 here is Thursday; only consistency matters.
    (day % 7) as usize
}

impl Forecaster {
    fn fitted(&self) -> bool {
        self.days.len() >= MIN_DAYS
    }

    /// The line at fractional Unix day `x`.
    fn line(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }

    /// Theil–Sen: the slope is the median of the pairwise slopes of the daily means (a few
    /// anomalous days do not tilt it), the line goes through the median residual.
    fn fit(&mut self) {
        let days: Vec<(f64, f64)> = self
            .days
            .iter()
            .map(|&(d, y)| (d as f64 + 0.5, y))
            .collect();
        let mut slopes = Vec::with_capacity(days.len() * days.len() / 2);
        for (i, a) in days.iter().enumerate() {
            for b in &days[i + 1..] {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
        self.slope = median(&mut slopes).unwrap_or(0.0);
        let mut offsets: Vec<f64> = days.iter().map(|(x, y)| y - self.slope * x).collect();
        self.intercept = median(&mut offsets).unwrap_or(0.0);
    }

    fn close_day(&mut self, day: u64, sum: f64, hours: u32) {
        let mean = sum / f64::from(hours);
        if self.fitted() {
            let expected = self.line(day as f64 + 0.5);
            let w = &mut self.weekly[day_of_week(day)];
            *w += WEEKLY * (mean - expected - *w);
        }
        // The line is fitted to the days' means without their weekday's part.
        self.days
            .push_back((day, mean - self.weekly[day_of_week(day)]));
        if self.days.len() > DAYS {
            self.days.pop_front();
        }
        self.fit();
    }

    /// Learns the mean rate of Unix hour `hour`; an hour already learned (or older) is
    /// ignored.
    pub fn observe(&mut self, hour: u64, value: f64) {
        if !value.is_finite() || self.last_hour.is_some_and(|l| hour <= l) {
            return;
        }
        let day = hour / 24;
        match self.today {
            Some((d, sum, n)) if d != day => {
                self.close_day(d, sum, n);
                self.today = Some((day, 0.0, 0));
            }
            None => self.today = Some((day, 0.0, 0)),
            _ => {}
        }
        let base = if self.fitted() {
            self.line(hour as f64 / 24.0 + 1.0 / 48.0) + self.weekly[day_of_week(day)]
        } else {
            let (_, sum, n) = self.today.expect("set above");
            if n == 0 { value } else { sum / f64::from(n) }
        };
        let h = (hour % 24) as usize;
        self.daily[h] += HOURLY * (value - base - self.daily[h]);
        if let Some((_, sum, n)) = &mut self.today {
            *sum += value;
            *n += 1;
        }
        self.hours += 1;
        self.last_hour = Some(hour);
    }

    /// The forecast for `ahead` hours after the last sample (NaN before [`MIN_DAYS`] days).
    pub fn forecast(&self, ahead: u64) -> f64 {
        let Some(last) = self.last_hour.filter(|_| self.fitted()) else {
            return f64::NAN;
        };
        let h = last + ahead;
        let f = self.line(h as f64 / 24.0 + 1.0 / 48.0)
            + self.daily[(h % 24) as usize]
            + self.weekly[day_of_week(h / 24)];
        // Rates and usage are never negative.
        f.max(0.0)
    }

    /// The trend, per day.
    pub fn trend_per_day(&self) -> f64 {
        self.slope
    }

    /// Days from the last sample until the forecast first reaches `limit` (0 when the last
    /// sample did); None when it does not within [`HORIZON_HOURS`], or before the trend is
    /// fitted.
    pub fn days_to_limit(&self, limit: f64, last_value: f64) -> Option<f64> {
        if !self.fitted() {
            return None;
        }
        if last_value >= limit {
            return Some(0.0);
        }
        (1..=HORIZON_HOURS)
            .find(|&a| self.forecast(a) >= limit)
            .map(|a| a as f64 / 24.0)
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The metric every service has forecast: its request rate, per second.
pub const REQUEST_RATE: &str = "request_rate";

fn request_rate() -> Arc<str> {
    Arc::from(REQUEST_RATE)
}

/// What a forecast says now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastPoint {
    /// What is forecast: [`REQUEST_RATE`], or a usage metric ([`crate::usage`]). (Points
    /// written before usage metrics were forecast have none: the request rate.)
    #[serde(default = "request_rate")]
    pub metric: Arc<str>,
    /// The last hour's mean: requests (or a rate usage metric's unit) per second, or a level
    /// usage metric's value. (Named `rate_per_s` in points written before.)
    #[serde(alias = "rate_per_s")]
    pub value: f64,
    /// The trend, in the value's unit per day.
    pub trend_per_day: f64,
    /// The `capacity:` limit, if one is configured.
    pub limit: Option<f64>,
    /// Days until the forecast reaches the limit (None: not within a year, or no limit).
    pub days_to_limit: Option<f64>,
    /// Hours learned.
    pub hours: u64,
}

/// A service's capacity limit (`capacity: [{service, metric, limit}]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityLimit {
    /// The service.
    pub service: String,
    /// What is limited: [`REQUEST_RATE`] or a usage metric's name.
    pub metric: String,
    /// The limit, in the metric's unit (per second for rates).
    pub limit: f64,
}

/// One saved model: (service, metric, model, latest point).
pub type Model = (String, String, Forecaster, ForecastPoint);

/// Some services' forecasters, as checkpoints and changelog records carry them: (service,
/// metric, model, latest point).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ForecastSnapshot {
    /// The models. One written by a release whose model differs is left out when read (it
    /// learns afresh; the rest of the record is read as written).
    #[serde(deserialize_with = "crate::saved::of_this_release")]
    pub models: Vec<Model>,
    /// The last hour sampled.
    pub last_hour: u64,
}

/// Forecasters of every service's request rate, and of the usage metrics that have a
/// `capacity:` limit, sampled on each hour of engine time.
#[derive(Clone, Debug)]
pub struct Forecasts {
    limits: BTreeMap<(String, String), f64>,
    max_models: usize,
    last_hour: u64,
    models: BTreeMap<(String, Arc<str>), (Forecaster, ForecastPoint)>,
}

impl Forecasts {
    /// Forecasts of at most `max_services` services' request rates (and as many usage
    /// series), with their limits.
    pub fn new(limits: &[CapacityLimit], max_services: usize) -> Self {
        Self {
            limits: limits
                .iter()
                .map(|l| ((l.service.clone(), l.metric.clone()), l.limit))
                .collect(),
            max_models: max_services.saturating_mul(2),
            last_hour: 0,
            models: BTreeMap::new(),
        }
    }

    /// The usage metrics with a limit: (service, metric).
    fn usage_limits(&self) -> impl Iterator<Item = (&str, &str)> {
        self.limits
            .keys()
            .filter(|(_, m)| m != REQUEST_RATE)
            .map(|(s, m)| (s.as_str(), m.as_str()))
    }

    /// At each new hour of engine time, learns every service's mean rate, and every limited
    /// usage metric's mean value, over the hour that ended.
    pub fn sample(&mut self, engine: &crate::engine::Engine) {
        let hour = crate::time::secs(engine.now()) / 3600;
        if hour <= self.last_hour {
            return;
        }
        self.last_hour = hour;
        if let Ok(rows) = engine.service_slis(crate::time::Span::hours(1)) {
            for r in rows {
                self.learn(&r.service, REQUEST_RATE, hour - 1, r.rate_per_s);
            }
        }
        let usage: Vec<(String, String, f64)> = self
            .usage_limits()
            .filter_map(|(s, m)| {
                let v = engine
                    .usage()
                    .value(s, m, crate::time::Span::hours(1), engine.now())?;
                Some((s.to_string(), m.to_string(), v))
            })
            .collect();
        for (s, m, v) in usage {
            self.learn(&s, &m, hour - 1, v);
        }
    }

    /// Learns `service`'s `metric`'s mean of Unix hour `hour`.
    pub fn learn(&mut self, service: &str, metric: &str, hour: u64, value: f64) {
        let key = (service.to_string(), Arc::<str>::from(metric));
        if !self.models.contains_key(&key) && self.models.len() >= self.max_models {
            return;
        }
        let limit = self
            .limits
            .get(&(service.to_string(), metric.to_string()))
            .copied();
        let (m, point) = self
            .models
            .entry(key)
            .or_insert_with_key(|(_, metric)| (Forecaster::default(), Self::empty(metric, limit)));
        m.observe(hour, value);
        *point = ForecastPoint {
            metric: point.metric.clone(),
            value,
            trend_per_day: m.trend_per_day(),
            limit,
            days_to_limit: limit.and_then(|l| m.days_to_limit(l, value)),
            hours: m.hours,
        };
    }

    fn empty(metric: &Arc<str>, limit: Option<f64>) -> ForecastPoint {
        ForecastPoint {
            metric: metric.clone(),
            value: 0.0,
            trend_per_day: 0.0,
            limit,
            days_to_limit: None,
            hours: 0,
        }
    }

    /// The latest forecast of `service`'s `metric`.
    pub fn get(&self, service: &str, metric: &str) -> Option<ForecastPoint> {
        self.models
            .get(&(service.to_string(), Arc::from(metric)))
            .map(|(_, p)| p.clone())
    }

    /// The forecast of `service` that reaches its limit first (else its request rate's): what
    /// a policy's `forecast.days_to_limit` reads.
    pub fn most_urgent(&self, service: &str) -> Option<ForecastPoint> {
        self.models
            .range((service.to_string(), Arc::from(""))..)
            .take_while(|((s, _), _)| s == service)
            .map(|(_, (_, p))| p)
            .min_by(|a, b| {
                let days = |p: &ForecastPoint| p.days_to_limit.unwrap_or(f64::INFINITY);
                days(a)
                    .total_cmp(&days(b))
                    .then_with(|| (&*b.metric == REQUEST_RATE).cmp(&(&*a.metric == REQUEST_RATE)))
            })
            .cloned()
    }

    /// The models of the services for which `owns(service)` holds.
    pub fn snapshot_of(&self, owns: impl Fn(&str) -> bool) -> ForecastSnapshot {
        ForecastSnapshot {
            models: self
                .models
                .iter()
                .filter(|((service, _), _)| owns(service))
                .map(|((service, metric), (m, p))| {
                    (service.clone(), metric.to_string(), m.clone(), p.clone())
                })
                .collect(),
            last_hour: self.last_hour,
        }
    }

    /// Takes over the models of `snap` (from [`Forecasts::snapshot_of`]), replacing those of
    /// the same service and metric, with today's limits; models beyond the cap are left out.
    pub fn merge(&mut self, snap: ForecastSnapshot) {
        for (service, metric, model, mut point) in snap.models {
            let key = (service, Arc::<str>::from(metric.as_str()));
            if !self.models.contains_key(&key) && self.models.len() >= self.max_models {
                continue;
            }
            point.limit = self.limits.get(&(key.0.clone(), metric)).copied();
            point.days_to_limit = point
                .limit
                .and_then(|l| model.days_to_limit(l, point.value));
            self.models.insert(key, (model, point));
        }
        self.last_hour = self.last_hour.max(snap.last_hour);
    }

    /// Forgets the models of the services for which `gone(service)` holds.
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) {
        self.models.retain(|(service, _), _| !gone(service));
    }

    /// Every latest forecast: (service, point), by service then metric.
    pub fn all(&self) -> impl Iterator<Item = (&str, &ForecastPoint)> {
        self.models.iter().map(|((s, _), (_, p))| (s.as_str(), p))
    }
}

/// The errors of forecasting the last `holdout` share of hourly `values` (Unix hour, mean)
/// from a model fitted on the rest, without updates: what the forecast's days ahead are worth.
/// MAPE is the mean of |error| / |value| over the hours whose value is not 0 (it explodes on
/// values near 0); WAPE is Σ|error| / Σ|value| (the same weighted by size, stable near 0).
/// None when too short.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HoldoutErrors {
    /// Mean absolute percentage error, as a share.
    pub mape: f64,
    /// Weighted absolute percentage error, as a share.
    pub wape: f64,
}

/// See [`HoldoutErrors`].
pub fn holdout_errors(values: &[(u64, f64)], holdout: f64) -> Option<HoldoutErrors> {
    let cut = ((values.len() as f64) * (1.0 - holdout)).round() as usize;
    if cut < 24 * MIN_DAYS || cut >= values.len() {
        return None;
    }
    let mut m = Forecaster::default();
    for &(h, v) in &values[..cut] {
        m.observe(h, v);
    }
    let last = values[cut - 1].0;
    let (mut pct, mut n, mut abs, mut total) = (0.0, 0, 0.0, 0.0);
    for &(h, v) in &values[cut..] {
        let e = (m.forecast(h - last) - v).abs();
        abs += e;
        total += v.abs();
        if v != 0.0 {
            pct += e / v.abs();
            n += 1;
        }
    }
    (n > 0 && total > 0.0).then(|| HoldoutErrors {
        mape: pct / n as f64,
        wape: abs / total,
    })
}

#[cfg(test)]
#[path = "forecast_tests.rs"]
mod tests;
