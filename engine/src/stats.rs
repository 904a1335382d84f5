//! Small, dependency-free statistics for the canary judge: the normal tail, the exact
//! binomial tail, and a Mann-Whitney test computed from two t-digests.

use crate::sketch::TDigest;

/// Upper tail of the standard normal, P(Z ≥ z) (Numerical Recipes `erfcc`, |error| < 1.2e-7).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// P(X ≥ x) for X ~ Binomial(n, p): exact up to n = 20 000, normal with continuity
/// correction beyond.
pub fn binomial_sf(x: u64, n: u64, p: f64) -> f64 {
    if x == 0 {
        return 1.0;
    }
    if x > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    if n > 20_000 {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        return normal_sf((x as f64 - 0.5 - mean) / sd);
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_pmf = ln_choose(n, x) + x as f64 * lp + (n - x) as f64 * lq;
    let mut sum = 0.0;
    for i in x..=n {
        let term = log_pmf.exp();
        sum += term;
        if term < sum * 1e-17 && i as f64 > n as f64 * p {
            break;
        }
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + lp - lq;
    }
    sum.min(1.0)
}

/// One-sided test that the canary's error rate exceeds the baseline's by more than the
/// factor `ratio` (1 = any excess): conditional on the total errors, the canary's share is
/// binomial (exact for sparse counts, where normal approximations fail). Returns the p-value.
pub fn error_rate_excess_p(
    canary_errors: u64,
    canary_n: u64,
    baseline_errors: u64,
    baseline_n: u64,
    ratio: f64,
) -> f64 {
    let k = canary_errors + baseline_errors;
    if k == 0 || canary_n == 0 || baseline_n == 0 {
        return 1.0;
    }
    let c = canary_n as f64 * ratio;
    binomial_sf(canary_errors, k, c / (c + baseline_n as f64))
}

/// Mann-Whitney on digests: the probability that a canary request is slower than a baseline
/// one (the AUC, 0.5 when identical), and the one-sided p-value of "canary slower" from the
/// normal approximation of U (variance (n₁ + n₂ + 1) / (12 n₁ n₂)).
pub fn mann_whitney_digests(canary: &TDigest, baseline: &TDigest) -> (f64, f64) {
    let (n1, n2) = (canary.count() as f64, baseline.count() as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return (0.5, 1.0);
    }
    let auc = canary
        .centroids_view()
        .iter()
        .map(|c| f64::from(c.weight) * baseline.cdf(f64::from(c.mean)))
        .sum::<f64>()
        / n1;
    let sd = ((n1 + n2 + 1.0) / (12.0 * n1 * n2)).sqrt();
    (auc, normal_sf((auc - 0.5) / sd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the tails agree with known values.
    #[test]
    fn known_values() {
        assert!((normal_sf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_sf(1.959_964) - 0.025).abs() < 1e-6);
        assert!((normal_sf(-1.644_854) - 0.95).abs() < 1e-6);
        // Binomial(10, 0.5): P(X >= 8) = 56/1024.
        assert!((binomial_sf(8, 10, 0.5) - 56.0 / 1024.0).abs() < 1e-12);
        assert_eq!(binomial_sf(0, 10, 0.3), 1.0);
        assert_eq!(binomial_sf(11, 10, 0.3), 0.0);
        // Normal branch close to the exact one at the boundary.
        let exact = binomial_sf(10_100, 20_000, 0.5);
        let approx = binomial_sf(20_200, 40_000, 0.5);
        assert!(exact > 0.0 && approx < exact, "{exact} {approx}");
        assert!(
            (error_rate_excess_p(5, 1000, 5, 1000, 1.0) - binomial_sf(5, 10, 0.5)).abs() < 1e-12
        );
    }
}
