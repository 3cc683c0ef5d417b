//! Differential privacy: the noise a release adds instead of suppressing.
//!
//! **Unit of privacy**: one entity (a pseudonym within one tenant's data),
//! added or removed. **Accounting**: zero-concentrated DP (ρ-zCDP, Bun and
//! Steinke 2016), with the discrete Gaussian mechanism of Canonne, Kamath
//! and Steinke 2020 (CKS20, Theorems 14 and 15): an integer vector `q`
//! released as `q + N_Z(0, σ²)` per coordinate is ρ-zCDP with
//! `ρ = Δ₂² / (2σ²)`; ρ of successive releases adds up.
//!
//! **Sensitivity from the host's own bounds**, never from the plugin.
//! Every noised quantity is an integer per released cell: the count of
//! entities, and per summed measure the fixed-point sum of the entities'
//! totals, each total clamped to the measure's declared bounds *after* the
//! entity's slots are merged into that cell ([`crate::tally::Tally`]). An
//! entity keeps at most `C = max_cells_per_entity` interior cells of a
//! table, and each reaches one cell of each of the table's `V` views (`2^D`
//! with margins, else 1), so adding or removing it moves at most `V·C` cells
//! of a quantity, each by at most `M`: 1 for a count, the larger bound in
//! fixed point for a sum. So `Δ₂² ≤ V·C·M²` per (table, quantity). Linked
//! tables are separate releases of the same entities, so their terms add.
//!
//! **One noise multiplier** `z` for the whole release: quantity `g` gets
//! `σ_g = z·M_g`, so `ρ = Σ_g V_g·C·M_g² / (2z²M_g²) = C·W / (2z²)` with
//! `W = Σ_g V_g`. `z` is computed in integers and rounded up to a multiple
//! of 2⁻³², so the ρ a release spends is at most the ρ it was given.
//!
//! **No floating point decides a sample**: prio's sampler (CKS20 Algorithm
//! 3 in exact rational arithmetic) draws from a caller's cryptographic
//! generator, every cell of every table in a fixed order, empty cells too,
//! so what it consumes does not depend on the data. Floating point only
//! reports: the released values, their noise scale and 95 % intervals.

use prio::dp::Rational;
use prio::dp::distributions::DiscreteGaussian;
use rand_010::CryptoRng;
use rand_010::distr::Distribution;
use serde::{Deserialize, Serialize};

use crate::accumulator::fixed_point_scales;
use crate::shape::Shape;
use crate::spec::{Statistic, TableSpec};

/// Nano-ρ per ρ: budgets and charges are whole nano-ρ, so they add up
/// exactly.
pub const NANOS_PER_RHO: u64 = 1_000_000_000;

/// Most values one release may noise (cells times noised quantities, every
/// table): sampling runs at about 15 000 values a second at the scale of
/// fixed-point sums, so this bounds a release's sampling to seconds.
pub const MAX_NOISED_VALUES: usize = 65_536;

/// `z` is `z_num / 2^Z_SHIFT`.
const Z_SHIFT: u32 = 32;

/// A quantity the release noises per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Distinct entities.
    Count,
    /// The fixed-point sum of the measure with this index.
    Sum(usize),
}

/// The noise of one quantity of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseGroup {
    /// Index of the table among the gate's.
    pub table: usize,
    pub quantity: Quantity,
    /// Views of the table: cells one interior cell is counted in.
    pub views: u32,
    /// M: the most one entity's total moves one cell, in fixed point (1 for
    /// a count).
    pub bound: u128,
    /// The noise's σ in fixed point, times 2^32.
    sigma_num: u128,
    /// The fixed-point scale of the quantity (1 for a count).
    pub(crate) scale: f64,
}

impl NoiseGroup {
    /// σ in the quantity's own units (entities, or the measure's unit).
    pub fn sigma(&self) -> f64 {
        self.sigma_fixed() / self.scale
    }

    /// σ in fixed point.
    pub(crate) fn sigma_fixed(&self) -> f64 {
        self.sigma_num as f64 / f64::from(1u32 << 31) / 2.0
    }
}

/// How a release under a given ρ adds its noise.
#[derive(Debug, Clone, PartialEq)]
pub struct DpPlan {
    /// ρ given to the release, in nano-ρ.
    pub rho_nanos: u64,
    /// C: the cells an entity keeps per table.
    pub cells_per_entity: u32,
    /// W: the views of every noised quantity, added up.
    pub weight: u64,
    /// z times 2^32.
    z_num: u128,
    /// Per table, in order, the quantities it noises.
    pub groups: Vec<NoiseGroup>,
}

/// Why a release cannot be made differentially private as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DpError {
    #[error("ρ must be at least one nano-ρ (1e-9)")]
    NoBudget,
    #[error("a differentially private release noises {values} values, more than the {max} allowed")]
    TooManyValues { values: usize, max: usize },
    #[error("the noise sampler failed: {0}")]
    Sampler(String),
    #[error("the gate's policy is not differentially private")]
    ThresholdPolicy,
}

/// What a differentially private release says of its noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpSummary {
    /// ρ the release spent (zCDP), at most what it was given.
    pub rho: f64,
    /// ρ it was given, in nano-ρ.
    pub rho_nanos: u64,
    /// z: every noised quantity's σ is z times its sensitivity bound.
    pub noise_multiplier: f64,
    /// C: the cells an entity counts in per table.
    pub cells_per_entity: u32,
}

/// A 95 % interval of a released value's noise (`None`: unbounded, when a
/// mean's count or a ratio's denominator may be zero or of either sign).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

/// The smallest integer `n` with `n² ≥ x`.
fn ceil_isqrt(x: u128) -> u128 {
    let n = x.isqrt();
    if n * n == x { n } else { n + 1 }
}

/// The views of a table: the released cells one interior cell counts in.
fn views(spec: &TableSpec) -> u32 {
    if spec.margins { 1 << spec.dimensions.len() } else { 1 }
}

/// The quantities a table noises: the count if a statistic reads it, and
/// every summed measure.
fn quantities(spec: &TableSpec) -> Vec<Quantity> {
    let counted = spec.statistics.iter().any(|s| matches!(s, Statistic::Count | Statistic::Mean(_)));
    counted
        .then_some(Quantity::Count)
        .into_iter()
        .chain(spec.summed_measures().into_iter().map(Quantity::Sum))
        .collect()
}

/// A measure's fixed-point clamp `[round(L·s), round(U·s)]`, as the
/// accumulator rounds contributions.
pub(crate) fn fixed_bounds(spec: &TableSpec, m: usize) -> (i128, i128) {
    let scale = fixed_point_scales(spec)[m];
    let measure = &spec.measures[m];
    ((measure.lower * scale).round() as i128, (measure.upper * scale).round() as i128)
}

impl DpPlan {
    /// The noise of a release of `specs` (with their shapes) at
    /// `rho_nanos`, each entity in at most `cells_per_entity` cells per
    /// table (1 to 64).
    pub(crate) fn new(
        specs: &[TableSpec],
        shapes: &[Shape],
        cells_per_entity: u32,
        rho_nanos: u64,
    ) -> Result<DpPlan, DpError> {
        if rho_nanos == 0 {
            return Err(DpError::NoBudget);
        }
        let mut groups = Vec::new();
        let mut values = 0usize;
        for (t, (spec, shape)) in specs.iter().zip(shapes).enumerate() {
            let scales = fixed_point_scales(spec);
            for quantity in quantities(spec) {
                values = values.saturating_add(shape.count());
                let (bound, scale) = match quantity {
                    Quantity::Count => (1, 1.0),
                    Quantity::Sum(m) => {
                        let (lower, upper) = fixed_bounds(spec, m);
                        (lower.unsigned_abs().max(upper.unsigned_abs()).max(1), scales[m])
                    }
                };
                groups.push(NoiseGroup {
                    table: t,
                    quantity,
                    views: views(spec),
                    bound,
                    sigma_num: 0,
                    scale,
                });
            }
        }
        if values > MAX_NOISED_VALUES {
            return Err(DpError::TooManyValues { values, max: MAX_NOISED_VALUES });
        }
        let weight: u64 = groups.iter().map(|g| u64::from(g.views)).sum();
        // z² = C·W / (2ρ) = C·W·10⁹ / (2r); z_num = ⌈z·2³²⌉ is the least
        // integer with z_num² ≥ C·W·10⁹·2⁶³ / r. C ≤ 2⁶, W ≤ 2¹⁶ (values
        // are bounded) and 10⁹ < 2³⁰: the numerator stays below 2¹¹⁵.
        let numerator = (u128::from(cells_per_entity) * u128::from(weight) * u128::from(NANOS_PER_RHO)) << 63;
        let z_num = ceil_isqrt(numerator.div_ceil(u128::from(rho_nanos))).max(1);
        for group in &mut groups {
            group.sigma_num = z_num * group.bound;
        }
        Ok(DpPlan { rho_nanos, cells_per_entity, weight, z_num, groups })
    }

    /// z: each quantity's σ over its sensitivity bound.
    pub fn noise_multiplier(&self) -> f64 {
        self.z_num as f64 / f64::from(1u32 << 31) / 2.0
    }

    /// ρ the release spends: `C·W / (2z²)`, at most the ρ it was given.
    pub fn rho_spent(&self) -> f64 {
        let z = self.noise_multiplier();
        f64::from(self.cells_per_entity) * self.weight as f64 / (2.0 * z * z)
    }

    /// The summary a release carries.
    pub fn summary(&self) -> DpSummary {
        DpSummary {
            rho: self.rho_spent(),
            rho_nanos: self.rho_nanos,
            noise_multiplier: self.noise_multiplier(),
            cells_per_entity: self.cells_per_entity,
        }
    }

    /// One sampler per group, in the plan's order.
    pub(crate) fn samplers(&self) -> Result<Vec<DiscreteGaussian>, DpError> {
        self.groups
            .iter()
            .map(|g| {
                Rational::from_unsigned(g.sigma_num, 1u128 << Z_SHIFT)
                    .and_then(DiscreteGaussian::new)
                    .map_err(|e| DpError::Sampler(e.to_string()))
            })
            .collect()
    }
}

/// One draw of `sampler`, as an i128 (a draw past i128 has probability
/// below e^-(2^115) at any σ a plan makes).
pub(crate) fn draw(sampler: &DiscreteGaussian, rng: &mut dyn CryptoRng) -> Result<i128, DpError> {
    i128::try_from(&sampler.sample(rng)).map_err(|_| DpError::Sampler("a draw outside i128".into()))
}

/// Two-sided standard normal quantiles: 95 % and 97.5 % (a mean's or
/// ratio's two components, Bonferroni).
const Z95: f64 = 1.959_963_984_540_054;
const Z975: f64 = 2.241_402_727_604_947;

/// The least `w` with `P(|X| ≤ w) ≥ coverage` for `X ~ N_Z(0, σ²)`, `σ`
/// in fixed point. Below σ = 10⁴ from the exact mass function; above, the
/// normal quantile (the discrete Gaussian's variance is σ² to within
/// e^(-2π²σ²) there). Reporting only: no sample depends on it.
pub(crate) fn half_width(sigma: f64, two_sided_95: bool) -> f64 {
    let (coverage, quantile) = if two_sided_95 { (0.95, Z95) } else { (0.975, Z975) };
    if sigma >= 1e4 {
        return (quantile * sigma).ceil();
    }
    let reach = (40.0 * sigma + 10.0).ceil() as i64;
    let mass = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
    let total: f64 = mass(0) + 2.0 * (1..=reach).map(mass).sum::<f64>();
    let mut inside = mass(0);
    for w in 0..reach {
        if inside / total >= coverage {
            return w as f64;
        }
        inside += 2.0 * mass(w + 1);
    }
    reach as f64
}

/// The interval of `a / b` over boxes `a ∈ [a0, a1]`, `b ∈ [b0, b1]`:
/// unbounded when `b`'s may hold zero.
pub(crate) fn quotient(a: (f64, f64), b: (f64, f64)) -> Interval {
    if b.0 <= 0.0 && b.1 >= 0.0 {
        return Interval { lo: None, hi: None };
    }
    let corners = [a.0 / b.0, a.0 / b.1, a.1 / b.0, a.1 / b.1];
    Interval {
        lo: Some(corners.iter().copied().fold(f64::INFINITY, f64::min)),
        hi: Some(corners.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
    }
}

/// ε of a ρ-zCDP release at `delta` (CKS20 Corollary 13, the conversion
/// OpenDP uses): the least ε with
/// `inf_{α>1} exp((α−1)(αρ−ε)) / (α−1) · (1−1/α)^α ≤ δ`. Floating point,
/// for reporting; no budget decision reads it.
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    // For a fixed α the bound gives ε(α) = αρ + (ln(1/δ) + (α−1)ln(1−1/α)
    // − ln α) / (α−1) (the closed form of the same inequality); minimise
    // it over α by golden section on [1 + 10⁻⁹, 10⁶] (it is unimodal).
    let eps = |alpha: f64| {
        alpha * rho
            + ((1.0 / delta).ln() + (alpha - 1.0) * (1.0 - 1.0 / alpha).ln() - alpha.ln()) / (alpha - 1.0)
    };
    let (mut lo, mut hi) = (1.0 + 1e-9f64, 1e6f64);
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..200 {
        let a = hi - ratio * (hi - lo);
        let b = lo + ratio * (hi - lo);
        if eps(a) < eps(b) { hi = b } else { lo = a }
    }
    eps((lo + hi) / 2.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dimension, Domain, Measure};
    use rand_010::SeedableRng;
    use rand_010::rngs::ChaCha20Rng;

    fn table(dimensions: usize, margins: bool, statistics: Vec<Statistic>) -> TableSpec {
        TableSpec {
            name: "t".into(),
            description: String::new(),
            dimensions: (0..dimensions)
                .map(|d| Dimension {
                    name: format!("d{d}"),
                    domain: Domain::Labels(vec!["a".into(), "b".into()]),
                })
                .collect(),
            measures: vec![
                Measure { name: "x".into(), lower: 0.0, upper: 100.0 },
                Measure { name: "y".into(), lower: -3.0, upper: 2.0 },
            ],
            statistics,
            margins,
        }
    }

    fn plan(specs: &[TableSpec], c: u32, rho_nanos: u64) -> DpPlan {
        let shapes: Vec<Shape> = specs.iter().map(Shape::of).collect();
        DpPlan::new(specs, &shapes, c, rho_nanos).unwrap()
    }

    /// Draws of N_Z(0, σ²), σ = num / 2^32.
    fn draws(sigma_num: u128, n: usize, seed: u64) -> Vec<i128> {
        let sampler =
            DiscreteGaussian::new(Rational::from_unsigned(sigma_num, 1u128 << 32).unwrap()).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| draw(&sampler, &mut rng).unwrap()).collect()
    }

    /// The χ² critical value at upper tail p = 10⁻⁶ (Wilson–Hilferty).
    fn chi2_critical(df: f64) -> f64 {
        let z = 4.753_424_308_8; // the standard normal's 1 − 10⁻⁶ quantile
        let h = 2.0 / (9.0 * df);
        df * (1.0 - h + z * h.sqrt()).powi(3)
    }

    /// χ² of `counts` against `expected`, bins pooled left to right until
    /// each expects at least 5; returns (χ², degrees of freedom).
    fn chi2(counts: &[f64], expected: &[f64]) -> (f64, f64) {
        let (mut stat, mut bins) = (0.0, 0usize);
        let (mut o, mut e) = (0.0, 0.0);
        for (c, x) in counts.iter().zip(expected) {
            o += c;
            e += x;
            if e >= 5.0 {
                stat += (o - e) * (o - e) / e;
                bins += 1;
                (o, e) = (0.0, 0.0);
            }
        }
        if e > 0.0 {
            // The rest joins the last bin.
            stat += (o - e) * (o - e) / e.max(5.0);
        }
        (stat, bins.saturating_sub(1) as f64)
    }

    #[test]
    fn the_sampler_fits_the_exact_discrete_gaussian() {
        for sigma in [0.5, 1.0, 3.7, 15.7] {
            let sigma_num = (sigma * 2f64.powi(32)) as u128;
            let sigma_exact = sigma_num as f64 / 2f64.powi(32);
            let n = 40_000;
            let sample = draws(sigma_num, n, 0xD9);
            let reach = (40.0 * sigma_exact + 10.0).ceil() as i128;
            let mass = |x: i128| (-(x as f64).powi(2) / (2.0 * sigma_exact * sigma_exact)).exp();
            let total: f64 = (-reach..=reach).map(mass).sum();
            let mut counts = vec![0.0; (2 * reach + 1) as usize];
            for x in &sample {
                assert!(x.abs() <= reach, "σ = {sigma}: a draw of {x}");
                counts[(x + reach) as usize] += 1.0;
            }
            let expected: Vec<f64> = (-reach..=reach).map(|x| n as f64 * mass(x) / total).collect();
            let (stat, df) = chi2(&counts, &expected);
            assert!(stat < chi2_critical(df), "σ = {sigma}: χ² = {stat:.1} on {df} df");
        }
    }

    /// prio's draws against OpenDP's (100 000 draws of its integer
    /// Gaussian at scale 3.7, made by `tests/data/opendp_dgauss.py`): a
    /// two-sample χ² test of homogeneity, bins pooled until each holds at
    /// least 10 draws of the two samples together.
    #[test]
    fn the_sampler_agrees_with_opendps() {
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/opendp_dgauss_sigma3.7.json")).unwrap();
        let theirs: std::collections::BTreeMap<i128, f64> = reference["histogram"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap()))
            .collect();
        let n_theirs: f64 = theirs.values().sum();
        assert_eq!(n_theirs, 100_000.0);
        let sample = draws((3.7 * 2f64.powi(32)) as u128, 40_000, 0xD9);
        let mut ours = std::collections::BTreeMap::<i128, f64>::new();
        sample.iter().for_each(|&x| *ours.entry(x).or_default() += 1.0);
        let n_ours = sample.len() as f64;
        let (lo, hi) = (
            *theirs.keys().chain(ours.keys()).min().unwrap(),
            *theirs.keys().chain(ours.keys()).max().unwrap(),
        );
        let (ka, kb) = ((n_theirs / n_ours).sqrt(), (n_ours / n_theirs).sqrt());
        let (mut stat, mut bins, mut a, mut b) = (0.0, 0usize, 0.0, 0.0);
        let close = |a: &mut f64, b: &mut f64, stat: &mut f64| {
            *stat += (ka * *a - kb * *b).powi(2) / (*a + *b);
            (*a, *b) = (0.0, 0.0);
        };
        for x in lo..=hi {
            a += ours.get(&x).copied().unwrap_or(0.0);
            b += theirs.get(&x).copied().unwrap_or(0.0);
            if a + b >= 10.0 && x < hi {
                close(&mut a, &mut b, &mut stat);
                bins += 1;
            }
        }
        // The tail joins the last bin if too small to stand alone.
        if a + b > 0.0 {
            close(&mut a, &mut b, &mut stat);
            bins += 1;
        }
        let df = (bins - 1) as f64;
        assert!(stat < chi2_critical(df), "χ² = {stat:.1} on {df} df");
        assert!(df >= 20.0, "{df} df");
    }

    #[test]
    fn the_sampler_has_the_scale_of_fixed_point_sums() {
        // σ ≈ 2⁴⁴, odd in its last bits: the σ of a sum bounded by 2⁴⁰.
        let sigma_num = (15u128 << 72) + 0x1234_5677;
        let sigma = sigma_num as f64 / 2f64.powi(32);
        let n = 20_000;
        let sample = draws(sigma_num, n, 7);
        let mean = sample.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!(mean.abs() <= 5.0 * sigma / (n as f64).sqrt(), "mean {mean:e} at σ {sigma:e}");
        let variance = sample.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let ratio = variance / (sigma * sigma);
        assert!((0.952..=1.050).contains(&ratio), "s²/σ² = {ratio}");
        // 20 equiprobable bins of the normal.
        let edges: Vec<f64> = (1..20).map(|i| normal_quantile(f64::from(i) / 20.0)).collect();
        let mut counts = vec![0.0; 20];
        for &x in &sample {
            let z = x as f64 / sigma;
            counts[edges.iter().take_while(|&&e| z > e).count()] += 1.0;
        }
        let (stat, df) = chi2(&counts, &[n as f64 / 20.0; 20]);
        assert!(stat < chi2_critical(df), "χ² = {stat:.1} on {df} df");
    }

    /// The standard normal's quantile, by bisection of erf's series-free
    /// complement (accurate to 1e-9, enough for bin edges).
    fn normal_quantile(p: f64) -> f64 {
        let cdf = |x: f64| 0.5 * erfc(-x / 2f64.sqrt());
        let (mut lo, mut hi) = (-10.0, 10.0);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if cdf(mid) < p { lo = mid } else { hi = mid }
        }
        (lo + hi) / 2.0
    }

    /// erfc by Numerical Recipes' Chebyshev fit (relative error < 1.2e-7).
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
                                        + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }

    #[test]
    fn a_plan_spends_at_most_its_rho() {
        let specs = [
            table(
                2,
                true,
                vec![Statistic::Count, Statistic::Sum("x".into()), Statistic::Ratio("x".into(), "y".into())],
            ),
            table(1, false, vec![Statistic::Mean("y".into())]),
            table(0, false, vec![Statistic::Sum("x".into())]),
        ];
        for c in [1, 2, 3, 64] {
            for rho_nanos in [1, 7, 24_300_000, 999_999_999, 1 << 40, u64::MAX] {
                let plan = plan(&specs, c, rho_nanos);
                // Views: 4 × (count, x, y) + 1 × (count, y) + 1 × x.
                assert_eq!(plan.weight, 4 * 3 + 2 + 1);
                // ρ spent = C·W·2⁶³ / z_num² (in ρ); with N = C·W·10⁹·2⁶³
                // and q = ⌈N / r⌉: z_num² ≥ q and q·r ≥ N, so
                // C·W·2⁶³·10⁹ ≤ r·z_num², exactly, in integers.
                let n = (u128::from(c) * u128::from(plan.weight) * u128::from(NANOS_PER_RHO)) << 63;
                let q = n.div_ceil(u128::from(rho_nanos));
                assert!(plan.z_num * plan.z_num >= q && (plan.z_num - 1) * (plan.z_num - 1) < q.max(1));
                assert!(q * u128::from(rho_nanos) >= n);
                // And no more than a rounding step less.
                let given = rho_nanos as f64 / 1e9;
                assert!(plan.rho_spent() <= given * (1.0 + 1e-12), "{} > {given}", plan.rho_spent());
                if rho_nanos < 1 << 40 {
                    assert!(plan.rho_spent() >= given * (1.0 - 1e-6), "{} ≪ {given}", plan.rho_spent());
                }
                for g in &plan.groups {
                    assert_eq!(g.sigma_num, plan.z_num * g.bound);
                }
            }
        }
    }

    #[test]
    fn a_plan_refuses_no_budget_and_too_many_values() {
        let shapes = [Shape::of(&table(1, false, vec![Statistic::Count]))];
        let specs = [table(1, false, vec![Statistic::Count])];
        assert_eq!(DpPlan::new(&specs, &shapes, 1, 0), Err(DpError::NoBudget));
        let mut wide = table(1, false, vec![Statistic::Count, Statistic::Sum("x".into())]);
        wide.dimensions[0].domain = Domain::Labels((0..40_000).map(|i| format!("v{i}")).collect());
        let err = DpPlan::new(std::slice::from_ref(&wide), &[Shape::of(&wide)], 1, 1).unwrap_err();
        assert_eq!(err, DpError::TooManyValues { values: 80_000, max: MAX_NOISED_VALUES });
    }

    #[test]
    fn the_demo_shape_at_epsilon_one_has_the_documented_multiplier() {
        // ρ = 0.0243 is (1, 10⁻⁶)-DP by CKS20 Cor. 13 (ε = 0.9988; 0.02436
        // would be ε = 1 exactly), and the simple bound ρ + 2√(ρ ln 1/δ) is looser.
        assert!((0.998..=1.0).contains(&epsilon(0.0243, 1e-6)), "{}", epsilon(0.0243, 1e-6));
        assert!(epsilon(0.0244, 1e-6) > 1.0);
        assert!(epsilon(0.0243, 1e-6) <= 0.0243 + 2.0 * (0.0243 * (1e6f64).ln()).sqrt());
        // One count, no margins: z = √(1/(2·0.0243)) = 4.536.
        let p = plan(&[table(1, false, vec![Statistic::Count])], 1, 24_300_000);
        assert!((p.noise_multiplier() - 4.5361).abs() < 1e-3, "{}", p.noise_multiplier());
        // Two dimensions with margins, count and two sums: W = 12, z = 15.71.
        let p = plan(
            &[table(2, true, vec![Statistic::Count, Statistic::Ratio("x".into(), "y".into())])],
            1,
            24_300_000,
        );
        assert!((p.noise_multiplier() - 15.7135).abs() < 1e-3, "{}", p.noise_multiplier());
    }

    #[test]
    fn half_widths_cover_95_percent() {
        // Exact values from the mass function.
        assert_eq!(half_width(0.5, true), 1.0);
        assert_eq!(half_width(4.53, true), 9.0);
        assert_eq!(half_width(15.7, true), 31.0);
        // Large σ: the normal quantile.
        assert_eq!(half_width(1e6, true), (Z95 * 1e6).ceil());
        assert!(half_width(15.7, false) > half_width(15.7, true));
    }

    #[test]
    fn quotients_of_intervals() {
        assert_eq!(quotient((1.0, 2.0), (-1.0, 1.0)), Interval { lo: None, hi: None });
        assert_eq!(quotient((1.0, 2.0), (2.0, 4.0)), Interval { lo: Some(0.25), hi: Some(1.0) });
        assert_eq!(quotient((-1.0, 2.0), (-4.0, -2.0)), Interval { lo: Some(-1.0), hi: Some(0.5) });
    }
}

/// Differentially private releases through the gate.
#[cfg(test)]
mod release_tests {
    use super::*;
    use crate::release::tests::{add, issued, spec};
    use crate::{
        Contributions, Dimension, Domain, Gate, IssuedEntities, Measure, Policy, Scope, TenantIntake,
    };
    use proptest::prelude::*;
    use rand_010::rngs::ChaCha20Rng;
    use rand_010::{Rng, SeedableRng, TryRng};

    const RHO: u64 = 24_300_000; // ε = 1 at δ = 10⁻⁶

    fn fuel(
        gate: &Gate,
        issued: &IssuedEntities,
        entities: &[u64],
        codes: &[u32],
        litres: &[f64],
    ) -> TenantIntake {
        let mut intake = gate.intake();
        add(&mut intake, issued, entities, codes, litres).unwrap();
        intake
    }

    /// Exact plus noise, per group and cell: what `release_dp` releases
    /// before post-processing.
    fn noisy(gate: &Gate, intakes: &[TenantIntake], rng: &mut dyn CryptoRng) -> Vec<Vec<i128>> {
        gate.dp_noisy(intakes, gate.dp_plan().unwrap(), rng).unwrap()
    }

    /// A gate of `specs` under `policy` made differentially private at
    /// the default ρ ([`RHO`]).
    fn dp_gate(specs: Vec<TableSpec>, policy: Policy) -> Gate {
        let policy = Policy { privacy: crate::Privacy::Dp, isolation: crate::Isolation::Entity, ..policy };
        let gate = Gate::new(specs, policy, Scope::Tenant).unwrap();
        assert_eq!(gate.dp_plan().unwrap().rho_nanos, RHO);
        gate
    }

    #[test]
    fn a_dp_release_has_every_cell_with_its_noise_and_interval() {
        let gate = Gate::new(vec![spec()], Policy::default(), Scope::Tenant).unwrap();
        let dp = dp_gate(vec![spec()], Policy::default());
        let (issued, ids) = issued(11);
        // North 10 entities, south 1, east none: threshold mode suppresses
        // south and east.
        let codes: Vec<u32> = (0..11).map(|i| u32::from(i == 10)).collect();
        let intake = |gate: &Gate| fuel(gate, &issued, &ids, &codes, &[40.0; 11]);
        let threshold = gate.release(&[intake(&gate)]);
        assert_eq!(threshold.tables[0].suppressed_cells, 2);
        assert_eq!(
            gate.release_dp(&[intake(&gate)], &mut ChaCha20Rng::seed_from_u64(1)),
            Err(DpError::ThresholdPolicy)
        );
        let release = dp.release_dp(&[intake(&dp)], &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        let summary = release.dp.as_ref().unwrap();
        assert_eq!(summary.rho_nanos, RHO);
        assert!(summary.rho <= 0.0243 && summary.rho > 0.0242, "{}", summary.rho);
        let table = &release.tables[0];
        assert_eq!(table.suppressed_cells, 0);
        let keys = |t: &crate::ReleasedTable| t.cells.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(table), keys(&threshold.tables[0]));
        // Count and sum of litres: W = 2, z = √(2 / 0.0486) = 6.415; the
        // sum's σ is z times the bound of 100 litres.
        let sd = table.noise_sd.as_ref().unwrap();
        let z = summary.noise_multiplier;
        assert!((z - 6.4150).abs() < 1e-3, "{z}");
        assert_eq!(sd[0], Some(z));
        assert!((sd[1].unwrap() - z * 100.0).abs() < 1e-6 * z * 100.0, "{sd:?}");
        assert_eq!(sd[2], None, "a mean's noise is its components'");
        for cell in &table.cells {
            let values = cell.values.as_ref().unwrap();
            let intervals = cell.intervals.as_ref().unwrap();
            assert_eq!(values.len(), 3);
            // Count and sum: value ± w with w the exact 95 % half-width.
            let w = half_width(z, true);
            assert_eq!(intervals[0], Interval { lo: Some(values[0] - w), hi: Some(values[0] + w) });
            assert!(intervals[1].lo.unwrap() < values[1] && values[1] < intervals[1].hi.unwrap());
            // The mean is the noisy sum over the noisy count.
            assert_eq!(values[2], values[1] / values[0].max(1.0));
        }
        // A threshold release carries none of it, nor in its JSON.
        let json = serde_json::to_string(&threshold).unwrap();
        assert!(
            !json.contains("noise_sd") && !json.contains("intervals") && !json.contains("\"dp\""),
            "{json}"
        );
    }

    #[test]
    fn an_entity_moves_a_sum_by_its_bound_however_many_rows_it_has() {
        let gate = dp_gate(vec![spec()], Policy::default());
        let plan = gate.dp_plan().unwrap();
        let (issued, ids) = issued(2);
        // 2²³ + 2²⁰ rows of the upper bound: the accumulator's i64 words
        // wrap, the exact sum is rows × 100, the released one entity's 100.
        let rows = (1usize << 23) + (1 << 20);
        let many = fuel(&gate, &issued, &vec![ids[0]; rows], &vec![0; rows], &vec![100.0; rows]);
        let one = fuel(&gate, &issued, &ids[..1], &[0], &[100.0]);
        let exact = |intake: &TenantIntake| gate.dp_exact(std::slice::from_ref(intake), plan);
        assert_eq!(exact(&many), exact(&one));
        let (_, upper) = fixed_bounds(&spec(), 0);
        assert_eq!(exact(&one)[1][0], upper);
        assert_eq!(exact(&one)[0][0], 1, "one entity, counted once");
    }

    #[test]
    fn a_dp_gate_that_cannot_noise_its_tables_is_refused_at_setup() {
        let mut wide = spec();
        wide.dimensions[0].domain = Domain::Labels((0..30_000).map(|i| format!("r{i}")).collect());
        let dp =
            Policy { privacy: crate::Privacy::Dp, isolation: crate::Isolation::Entity, ..Policy::default() };
        // Count and the litres sum: 60 000 values fit; a third quantity would not.
        assert!(Gate::new(vec![wide.clone()], dp.clone(), Scope::Tenant).is_ok());
        wide.measures.push(Measure { name: "km".into(), lower: 0.0, upper: 1.0 });
        wide.statistics.push(Statistic::Sum("km".into()));
        let err = Gate::new(vec![wide.clone()], dp, Scope::Tenant).unwrap_err();
        assert_eq!(
            err,
            crate::GateError::Dp(DpError::TooManyValues { values: 90_000, max: MAX_NOISED_VALUES })
        );
        // The same tables under thresholds are fine.
        assert!(Gate::new(vec![wide], Policy::default(), Scope::Tenant).is_ok());
    }

    /// A generator that counts the bytes it hands out.
    struct Counting<R>(R, u64);

    impl<R: Rng> TryRng for Counting<R> {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            self.1 += 4;
            Ok(self.0.next_u32())
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.1 += 8;
            Ok(self.0.next_u64())
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
            self.1 += dest.len() as u64;
            self.0.fill_bytes(dest);
            Ok(())
        }
    }

    impl<R: Rng + CryptoRng> rand_010::TryCryptoRng for Counting<R> {}

    #[test]
    fn the_noise_and_the_generator_use_do_not_depend_on_the_data() {
        let gate = dp_gate(vec![spec()], Policy::default());
        let plan = gate.dp_plan().unwrap();
        let (issued, ids) = issued(1000);
        let empty = gate.intake();
        let rows = 200_000;
        let heavy = fuel(
            &gate,
            &issued,
            &(0..rows).map(|i| ids[i % 1000]).collect::<Vec<_>>(),
            &vec![2; rows],
            &vec![100.0; rows],
        );
        let mut random = ChaCha20Rng::seed_from_u64(3);
        let codes: Vec<u32> = (0..1000).map(|_| random.next_u32() % 3).collect();
        let litres: Vec<f64> = (0..1000).map(|_| f64::from(random.next_u32() % 1000) / 7.0).collect();
        let mixed = fuel(&gate, &issued, &ids, &codes, &litres);
        let mut seen = Vec::new();
        for intake in [&empty, &heavy, &mixed] {
            let intakes = std::slice::from_ref(intake);
            let mut rng = Counting(ChaCha20Rng::seed_from_u64(99), 0);
            let noisy = noisy(&gate, intakes, &mut rng);
            let exact = gate.dp_exact(intakes, plan);
            let noise: Vec<Vec<i128>> = noisy
                .iter()
                .zip(&exact)
                .map(|(n, e)| n.iter().zip(e).map(|(n, e)| n - e).collect())
                .collect();
            seen.push((rng.1, noise));
        }
        assert!(seen[0].0 > 0);
        assert_eq!(seen[0], seen[1], "empty and heavy");
        assert_eq!(seen[0], seen[2], "empty and mixed");
    }

    /// Tables linked by margins and nesting, with two measures and all four
    /// statistics: a 3 × 2 table with margins, its first dimension alone,
    /// and an unlinked one.
    fn linked_specs() -> Vec<TableSpec> {
        let labels = |n: usize| Domain::Labels((0..n).map(|i| format!("l{i}")).collect());
        let dimension = |name: &str, n| Dimension { name: name.into(), domain: labels(n) };
        let measures = vec![
            Measure { name: "x".into(), lower: 0.0, upper: 50.0 },
            Measure { name: "y".into(), lower: -2.0, upper: 3.0 },
        ];
        let statistics = vec![
            Statistic::Count,
            Statistic::Sum("x".into()),
            Statistic::Mean("y".into()),
            Statistic::Ratio("x".into(), "y".into()),
        ];
        let table = |name: &str, dimensions, margins| TableSpec {
            name: name.into(),
            description: String::new(),
            dimensions,
            measures: measures.clone(),
            statistics: statistics.clone(),
            margins,
        };
        vec![
            table("fine", vec![dimension("a", 3), dimension("b", 2)], true),
            table("coarse", vec![dimension("a", 3)], false),
            table("other", vec![dimension("c", 4)], false),
        ]
    }

    /// One entity's rows: (cell codes of `fine`, code of `other`, x, y).
    type Rows = Vec<((u32, u32), u32, f64, f64)>;

    fn intake_of(gate: &Gate, issued: &IssuedEntities, people: &[(u64, Rows)]) -> TenantIntake {
        let mut intake = gate.intake();
        for (entity, rows) in people {
            for &((a, b), c, x, y) in rows {
                let fine = Contributions {
                    entities: &[*entity],
                    dimensions: &[&[a], &[b]],
                    measures: &[&[x], &[y]],
                };
                intake.contribute(0, issued, &fine).unwrap();
                let other =
                    Contributions { entities: &[*entity], dimensions: &[&[c]], measures: &[&[x], &[y]] };
                intake.contribute(2, issued, &other).unwrap();
            }
        }
        intake
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![-1e9..1e9f64, Just(50.0), Just(-2.0), Just(3.0), Just(0.0)]
    }

    fn person() -> impl Strategy<Value = Rows> {
        prop::collection::vec(((0..3u32, 0..2u32), 0..4u32, value(), value()), 1..6).prop_flat_map(|rows| {
            // Sometimes many copies of the same rows.
            (Just(rows), prop_oneof![Just(1usize), Just(1000usize)])
                .prop_map(|(rows, copies)| rows.iter().cycle().take(rows.len() * copies).copied().collect())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Adding or removing one entity moves each noised quantity by at
        /// most its sensitivity, and the whole release by at most the ρ it
        /// was given: Σ_g Σ_cells diff² / (2σ_g²) ≤ ρ.
        #[test]
        fn one_entity_moves_the_exact_release_within_its_sensitivity(
            others in prop::collection::vec(person(), 0..8),
            target in person(),
            cells_per_entity in 1..4u32,
        ) {
            let policy = Policy { max_cells_per_entity: cells_per_entity, ..Policy::default() };
            let gate = dp_gate(linked_specs(), policy);
            let plan = gate.dp_plan().unwrap();
            let (issued, ids) = issued(others.len() as u64 + 1);
            let people: Vec<(u64, Rows)> = ids.iter().copied().zip(others).collect();
            let without = intake_of(&gate, &issued, &people);
            let mut all = people.clone();
            all.push((ids[ids.len() - 1], target));
            let with = intake_of(&gate, &issued, &all);
            let (a, b) = (gate.dp_exact(&[without], plan), gate.dp_exact(&[with], plan));
            // `coarse` got no contribution: it is derived from `fine`.
            let coarse = plan.groups.iter().position(|g| g.table == 1 && g.quantity == Quantity::Count).unwrap();
            prop_assert!(b[coarse].iter().sum::<i128>() > 0);
            let mut rho = 0.0;
            for ((group, a), b) in plan.groups.iter().zip(&a).zip(&b) {
                let moved: u128 = a.iter().zip(b).map(|(a, b)| (a - b).unsigned_abs().pow(2)).sum();
                let bound = u128::from(group.views) * u128::from(cells_per_entity) * group.bound.pow(2);
                prop_assert!(moved <= bound, "{group:?}: {moved} > {bound}");
                rho += moved as f64 / (2.0 * group.sigma_fixed().powi(2));
            }
            prop_assert!(rho <= plan.rho_spent() * (1.0 + 1e-9), "{rho} > {}", plan.rho_spent());
        }
    }

    /// Known constants: every other entity contributes 0, so an exact sum
    /// would be the target's value. Released with noise, the attacker's
    /// estimate errs as the noise scale says: over 1 000 releases its mean
    /// error is near 0, its spread is σ (chi-square bounds at p = 10⁻⁶) and
    /// the 95 % intervals cover the truth 95 % of the time.
    #[test]
    fn known_constants_give_the_target_away_only_up_to_the_noise() {
        let gate = dp_gate(vec![spec()], Policy::default());
        let (issued, ids) = issued(31);
        let mut litres = vec![0.0; 31];
        litres[30] = 73.0;
        let intake = fuel(&gate, &issued, &ids, &[0; 31], &litres);
        let intakes = std::slice::from_ref(&intake);
        let n = 1000;
        let (mut errors, mut covered) = (Vec::with_capacity(n), 0);
        let mut sigma = 0.0;
        for seed in 0..n as u64 {
            let release = gate.release_dp(intakes, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
            let table = &release.tables[0];
            sigma = table.noise_sd.as_ref().unwrap()[1].unwrap();
            let cell = &table.cells[0];
            let estimate = cell.values.as_ref().unwrap()[1];
            errors.push(estimate - 73.0);
            let interval = cell.intervals.as_ref().unwrap()[1];
            covered += usize::from(interval.lo.unwrap() <= 73.0 && 73.0 <= interval.hi.unwrap());
        }
        let mean = errors.iter().sum::<f64>() / n as f64;
        assert!(mean.abs() <= 5.0 * sigma / (n as f64).sqrt(), "mean error {mean} at σ {sigma}");
        let sd = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        assert!((0.892..=1.111).contains(&(sd / sigma)), "s = {sd}, σ = {sigma}");
        let coverage = covered as f64 / n as f64;
        assert!((0.916..=0.984).contains(&coverage), "coverage {coverage}");
    }
}
