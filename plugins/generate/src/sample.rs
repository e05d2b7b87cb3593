//! Choosing the next token from a row of logits.

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0: greedy. Above 0: logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to p (1: all).
    pub top_p: f32,
    /// Seeds the random draws.
    pub seed: u64,
}

impl Sampling {
    /// Whether the settings make sense; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature = {} must be 0 (greedy) or a positive number",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p = {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// Draws tokens according to a [`Sampling`].
pub struct Sampler {
    sampling: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler whose draws start from the seed.
    pub fn new(sampling: &Sampling) -> Self {
        Self {
            sampling: sampling.clone(),
            state: sampling.seed,
        }
    }

    /// The next token for `logits`.
    ///
    /// Candidates are ranked most likely first (ties: lower id first), but
    /// only as deep as top-k, top-p and the draw look: a full sort of a
    /// 49,152-token vocabulary at every step would cost more than the rest
    /// of the stage.
    pub fn next(&mut self, logits: &[f32]) -> i64 {
        if self.sampling.temperature == 0.0 {
            return argmax(logits) as i64;
        }
        let mut ranked = Ranked::new(logits);
        if ranked.order.is_empty() {
            return 0;
        }
        if self.sampling.top_k > 0 {
            ranked.keep_best(self.sampling.top_k);
        }
        let max = logits[ranked.nth(0)];
        let temperature = self.sampling.temperature;
        let weight = |i: usize| f64::from((logits[i] - max) / temperature).exp();
        let total: f64 = ranked.order.iter().map(|&i| weight(i)).sum();
        // top-p: the smallest prefix whose probability reaches p.
        let candidates = ranked.order.len();
        let mut keep = candidates;
        let mut kept = total;
        if self.sampling.top_p < 1.0 {
            let (mut share, mut mass) = (0.0, 0.0);
            for n in 0..candidates {
                let w = weight(ranked.nth(n));
                share += w / total;
                mass += w;
                if share >= f64::from(self.sampling.top_p) {
                    keep = n + 1;
                    kept = mass;
                    break;
                }
            }
        }
        let mut target = self.uniform() * kept;
        for n in 0..keep {
            let token = ranked.nth(n);
            let w = weight(token);
            if target < w {
                return token as i64;
            }
            target -= w;
        }
        ranked.nth(keep - 1) as i64
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Token ids (NaN logits left out), ranked most likely first on demand:
/// `order[..sorted]` is ranked, and everything after it ranks below.
struct Ranked<'a> {
    logits: &'a [f32],
    order: Vec<usize>,
    sorted: usize,
}

impl<'a> Ranked<'a> {
    fn new(logits: &'a [f32]) -> Self {
        Self {
            logits,
            order: (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect(),
            sorted: 0,
        }
    }

    /// Most likely first, then the lower id: a total order, so partial and
    /// full sorts rank alike.
    fn before(logits: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
        logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
    }

    /// Ranks the first `n` (at most all).
    fn rank(&mut self, n: usize) {
        let n = n.min(self.order.len());
        if n <= self.sorted {
            return;
        }
        let logits = self.logits;
        let rest = &mut self.order[self.sorted..];
        let more = n - self.sorted;
        if more < rest.len() {
            rest.select_nth_unstable_by(more - 1, |&a, &b| Self::before(logits, a, b));
        }
        rest[..more].sort_unstable_by(|&a, &b| Self::before(logits, a, b));
        self.sorted = n;
    }

    /// The `n`-th most likely (from 0); ranks ahead in growing steps.
    fn nth(&mut self, n: usize) -> usize {
        if n >= self.sorted {
            self.rank((n + 1).max(2 * self.sorted).max(64));
        }
        self.order[n]
    }

    /// Keeps only the `k` most likely.
    fn keep_best(&mut self, k: usize) {
        self.rank(k);
        self.order.truncate(k);
    }
}

/// The index of the largest value, the first on ties; NaN never wins.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_first_largest_and_never_nan() {
        let mut s = Sampler::new(&sampling(0.0, 0, 1.0, 0));
        assert_eq!(s.next(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(s.next(&[f32::NAN, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature_and_seed() {
        for seed in 0..20 {
            let mut s = Sampler::new(&sampling(5.0, 1, 1.0, seed));
            assert_eq!(s.next(&[0.0, 2.0, 1.9, 1.0]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities at temperature 1: about 0.84, 0.11, 0.04, ...
        let logits = [4.0, 2.0, 1.0, -3.0];
        for seed in 0..200 {
            let mut s = Sampler::new(&sampling(1.0, 0, 0.8, seed));
            assert_eq!(s.next(&logits), 0, "seed {seed}");
            let mut s = Sampler::new(&sampling(1.0, 0, 0.9, seed));
            assert!(s.next(&logits) <= 1, "seed {seed}");
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_others_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&sampling(1.0, 0, 1.0, seed));
            (0..32).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens, logits 0 and ln 3: probabilities 1/4 and 3/4.
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(&sampling(1.0, 0, 1.0, 42));
        let ones = (0..20_000).filter(|_| s.next(&logits) == 1).count();
        let share = ones as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    /// The sampler as it was first written: every candidate sorted.
    fn fully_sorted(sampling: &Sampling, state: &mut Sampler, logits: &[f32]) -> i64 {
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if sampling.top_k > 0 {
            order.truncate(sampling.top_k);
        }
        let max = logits[order[0]];
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| f64::from((logits[i] - max) / sampling.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut keep = weights.len();
        if sampling.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= f64::from(sampling.top_p) {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept: f64 = weights[..keep].iter().sum();
        let mut target = state.uniform() * kept;
        for (n, w) in weights[..keep].iter().enumerate() {
            if target < *w {
                return order[n] as i64;
            }
            target -= w;
        }
        order[keep - 1] as i64
    }

    #[test]
    fn ranking_only_as_deep_as_needed_draws_what_a_full_sort_draws() {
        // A vocabulary with ties, NaNs and a long flat tail, as logits are.
        let mut state = 1u64;
        let logits: Vec<f32> = (0..5000)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match i % 997 {
                    0 => f32::NAN,
                    1 => 3.0,
                    _ => ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0,
                }
            })
            .collect();
        let mut drawn = std::collections::HashSet::new();
        for (temperature, top_k, top_p) in [
            (1.0, 0, 1.0),
            (0.7, 0, 0.9),
            (1.5, 40, 1.0),
            (1.0, 40, 0.5),
            (0.3, 0, 0.99),
            (2.0, 4999, 0.95),
            (1.0, 1, 1.0),
        ] {
            let settings = sampling(temperature, top_k, top_p, 11);
            let mut fast = Sampler::new(&settings);
            let mut slow = Sampler::new(&settings);
            for step in 0..300 {
                let token = fast.next(&logits);
                let expected = fully_sorted(&settings, &mut slow, &logits);
                assert_eq!(token, expected, "{settings:?}, step {step}");
                drawn.insert(token);
            }
        }
        // The draws reached deep into the ranking, not just its head.
        assert!(drawn.len() > 500, "{}", drawn.len());
    }

    #[test]
    fn bad_settings_name_the_key() {
        assert!(
            sampling(-1.0, 0, 1.0, 0)
                .check()
                .unwrap_err()
                .contains("temperature")
        );
        assert!(
            sampling(1.0, 0, 0.0, 0)
                .check()
                .unwrap_err()
                .contains("top_p")
        );
        assert!(
            sampling(f32::NAN, 0, 1.0, 0)
                .check()
                .unwrap_err()
                .contains("temperature")
        );
    }
}
