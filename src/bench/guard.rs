//! The `--check` guard's arithmetic: is a meshlane mode below iptables on
//! a rate (connections/s, Gbit/s) by more than the run's own noise?
//!
//! Modes are interleaved round-robin, so each measured round gives one
//! ratio `mode / iptables` taken minutes apart from the next. The verdict
//! uses the median of those per-round ratios, and the run's noise is half
//! the spread of the same ratios (`(max - min) / 2`): how far one round's
//! comparison moved from another's on this machine in this run. A mode
//! fails when its median ratio is below `1 - noise`. With one round there
//! is no spread, so any ratio below 1 fails.

use serde::Serialize;

/// One compared cell's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Verdict {
    /// Median of the per-round ratios.
    pub ratio: f64,
    /// Half the spread (max - min) of the per-round ratios.
    pub noise: f64,
    /// Rounds that had both values.
    pub rounds: usize,
    /// The mode is below the base by more than the noise.
    pub below: bool,
}

/// Judges the per-round pairs (mode's value, base's value) of one cell;
/// None when no round has both values with a positive base.
pub fn judge(rounds: &[(f64, f64)]) -> Option<Verdict> {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .filter(|(_, base)| *base > 0.0)
        .map(|(mine, base)| mine / base)
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let n = ratios.len();
    let ratio = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    let noise = (ratios[n - 1] - ratios[0]) / 2.0;
    Some(Verdict {
        ratio,
        noise,
        rounds: n,
        below: ratio < 1.0 - noise,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearly_slower_fails() {
        // Ratios 0.80, 0.85, 0.82: median 0.82, noise 0.025.
        let v = judge(&[(80.0, 100.0), (85.0, 100.0), (82.0, 100.0)]).unwrap();
        assert!((v.ratio - 0.82).abs() < 1e-9);
        assert!((v.noise - 0.025).abs() < 1e-9);
        assert!(v.below);
    }

    #[test]
    fn slower_within_noise_passes() {
        // Ratios 0.90, 1.10, 0.97: median 0.97, noise 0.10 -> 0.97 >= 0.90.
        let v = judge(&[(90.0, 100.0), (110.0, 100.0), (97.0, 100.0)]).unwrap();
        assert!((v.ratio - 0.97).abs() < 1e-9);
        assert!((v.noise - 0.10).abs() < 1e-9);
        assert!(!v.below);
    }

    #[test]
    fn just_outside_the_noise_fails() {
        // Ratios 0.94, 0.96, 0.95: median 0.95, noise 0.01 -> below 0.99.
        let v = judge(&[(94.0, 100.0), (96.0, 100.0), (95.0, 100.0)]).unwrap();
        assert!(v.below);
    }

    #[test]
    fn faster_passes_and_even_counts_take_the_middle_mean() {
        let v = judge(&[(120.0, 100.0), (140.0, 100.0)]).unwrap();
        assert!((v.ratio - 1.3).abs() < 1e-9);
        assert!(!v.below);
    }

    #[test]
    fn one_round_has_no_noise() {
        let v = judge(&[(99.0, 100.0)]).unwrap();
        assert_eq!(v.noise, 0.0);
        assert!(v.below);
        assert!(!judge(&[(100.0, 100.0)]).unwrap().below);
    }

    #[test]
    fn rounds_without_a_base_are_left_out() {
        assert!(judge(&[]).is_none());
        assert!(judge(&[(5.0, 0.0)]).is_none());
        let v = judge(&[(5.0, 0.0), (110.0, 100.0)]).unwrap();
        assert_eq!(v.rounds, 1);
    }
}
