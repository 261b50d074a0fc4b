//! The distributions the hypothesis tests need: the standard normal (density, cdf, survival function,
//! quantile), Student's t with any real df > 0 (density, cdf, survival function, quantile:
//! Welch's df is not an integer) and the chi-square survival function (the SRM test). Reference
//! README §1.1–§1.4 (Φ, Φ⁻¹, F_t and its quantile), §3 (χ² survival function); the special
//! functions under them, and where their methods come from, are in `special.rs`.
//!
//! - Φ and its complement through erfc, each computed in the tail where it is small, so that
//!   p-values keep their relative precision (`1 − Φ(z)` would not);
//! - Φ⁻¹: P. J. Acklam's rational approximation (relative error 1.15e-9), then Halley steps on Φ
//!   as Acklam recommends, which take it to the precision of Φ itself;
//! - Student's t: F_t(t) = 1 − ½ I_x(df/2, ½), x = df/(df + t²) (Abramowitz & Stegun 26.7.1);
//!   the quantile by safeguarded Newton steps from the Cornish–Fisher expansion (A&S 26.7.5),
//!   with the closed forms at df = 1 and 2;
//! - chi-square: P(χ²_k > x) = Q(k/2, x/2) (A&S 26.4.19).
//!
//! These functions are total, like `f64::sqrt`: an argument outside the domain (a probability
//! outside [0, 1], df ≤ 0, NaN anywhere) gives NaN. The statistics built on them check their
//! inputs first and answer `None` instead, so no NaN leaves the module through them.

use std::f64::consts::{PI, SQRT_2};

use super::special::{beta_reg, beta_reg_half_large_a, erfc, exp_neg_square, gamma_reg_upper, ln_gamma_shift};

/// 1/√(2π).
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The standard normal density φ(x).
pub fn normal_pdf(x: f64) -> f64 {
    FRAC_1_SQRT_2PI * exp_neg_square(x, 0.5)
}

/// The standard normal cdf Φ(x), accurate relative to its value in the lower tail.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// The standard normal survival function 1 − Φ(x), accurate relative to its value in the upper
/// tail (where `1.0 - normal_cdf(x)` would be all rounding).
pub fn normal_sf(x: f64) -> f64 {
    0.5 * erfc(x / SQRT_2)
}

/// Φ⁻¹(p): −∞ at 0, +∞ at 1. Below p ≈ 1e-300 the Halley steps are skipped (φ underflows there)
/// and Acklam's 1.15e-9 relative error stands.
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p <= 0.5 {
        lower_normal_quantile(p)
    } else {
        // 1 − p is exact for p in [½, 1] (Sterbenz), and the lower tail is where Φ is accurate.
        -lower_normal_quantile(1.0 - p)
    }
}

/// The upper-tail quantile Φ⁻¹(1 − q), without forming 1 − q (z for α/2, as statsmodels'
/// `norm.isf(alpha / 2)` does).
pub fn normal_isf(q: f64) -> f64 {
    -normal_quantile(q)
}

/// Φ⁻¹ for 0 ≤ p ≤ ½.
fn lower_normal_quantile(p: f64) -> f64 {
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 0.5 {
        return 0.0;
    }
    let mut x = acklam(p);
    for _ in 0..2 {
        let e = normal_cdf(x) - p;
        let u = e / normal_pdf(x);
        if !u.is_finite() {
            break;
        }
        x -= u / (1.0 + 0.5 * x * u);
    }
    x
}

/// P. J. Acklam's rational approximation of Φ⁻¹ for 0 < p ≤ ½.
fn acklam(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    const P_LOW: f64 = 0.024_25;
    if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Student's t density with `df` degrees of freedom.
pub fn student_t_pdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if df.is_infinite() {
        return normal_pdf(t);
    }
    let half = 0.5 * df;
    (ln_gamma_shift(half, 0.5) - 0.5 * (df * PI).ln() - (half + 0.5) * (t * t / df).ln_1p()).exp()
}

/// The survival function 1 − F_t(t; df) of Student's t, any real `df` > 0 (∞ is the normal).
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if df.is_infinite() {
        return normal_sf(t);
    }
    if t < 0.0 {
        1.0 - t_upper_tail(-t, df)
    } else {
        t_upper_tail(t, df)
    }
}

/// The cdf F_t(t; df) of Student's t; by symmetry the survival function at −t.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    student_t_sf(-t, df)
}

/// P(T > t) for t ≥ 0: ½ I_x(df/2, ½) with x = df/(df + t²).
fn t_upper_tail(t: f64, df: f64) -> f64 {
    if t == 0.0 {
        return 0.5;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let t2 = t * t;
    let (x, y) = if t2.is_finite() { (df / (df + t2), t2 / (df + t2)) } else { (df / t / t, 1.0) };
    let a = 0.5 * df;
    // For t² ≪ df, x is within y of 1 and the continued fraction, which sees only x, loses
    // ~ε·df/t² (2e-8 at df = 1e9); the asymptotic expansion works from ln x = ln(1 − y) instead
    // and stays within 3e-14 wherever it converges, which is where it is needed.
    if a >= 15.0 {
        if let Some(i) = beta_reg_half_large_a(a, x, y) {
            return 0.5 * i;
        }
    }
    0.5 * beta_reg(a, 0.5, x, y)
}

/// The quantile F_t⁻¹(p; df): −∞ at 0, +∞ at 1.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if p < 0.5 {
        -t_upper_quantile(p, df)
    } else if p == 0.5 {
        0.0
    } else {
        t_upper_quantile(1.0 - p, df)
    }
}

/// The upper-tail quantile F_t⁻¹(1 − q; df), without forming 1 − q (t for α/2).
pub fn student_t_isf(q: f64, df: f64) -> f64 {
    -student_t_quantile(q, df)
}

/// The t > 0 with P(T > t) = q, for 0 ≤ q < ½.
fn t_upper_quantile(q: f64, df: f64) -> f64 {
    if q == 0.0 {
        return f64::INFINITY;
    }
    if df.is_infinite() {
        return normal_isf(q);
    }
    // Closed forms where the tails are too heavy for Newton to be quick.
    if df == 1.0 {
        return 1.0 / (PI * q).tan();
    }
    if df == 2.0 {
        return (1.0 - 2.0 * q) / (2.0 * q * (1.0 - q)).sqrt();
    }
    let z = normal_isf(q);
    let (z2, n) = (z * z, df);
    let cornish_fisher = z
        + z * (z2 + 1.0) / (4.0 * n)
        + z * ((5.0 * z2 + 16.0) * z2 + 3.0) / (96.0 * n * n)
        + z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / (384.0 * n * n * n);
    let mut t = if cornish_fisher.is_finite() && cornish_fisher > 0.0 { cornish_fisher } else { z.max(1.0) };
    // P(T > t) falls as t grows: keep a bracket [lo, hi] and fall back to bisection (or to
    // doubling, before an upper end is known) whenever a Newton step leaves it.
    let (mut lo, mut hi) = (0.0_f64, f64::INFINITY);
    for _ in 0..500 {
        let f = t_upper_tail(t, df) - q;
        if f == 0.0 {
            break;
        }
        if f > 0.0 {
            lo = t;
        } else {
            hi = t;
        }
        let newton = t + f / student_t_pdf(t, df);
        let next = if newton > lo && newton < hi {
            newton
        } else if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            2.0 * t
        };
        let done = (next - t).abs() <= 4.0 * f64::EPSILON * next;
        t = next;
        if done {
            break;
        }
    }
    t
}

/// The chi-square survival function P(χ²_df > x), any real `df` > 0.
pub fn chi_square_sf(x: f64, df: f64) -> f64 {
    if x.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    if df == 2.0 {
        // Q(1, x/2) = e^(−x/2) exactly: a three-arm SRM check needs no series.
        return (-0.5 * x).exp();
    }
    gamma_reg_upper(0.5 * df, 0.5 * x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rel;

    #[test]
    fn normal_quantile_matches_wichura() {
        // Python's statistics.NormalDist().inv_cdf, which is Wichura's AS241 (PPND16).
        let cases = [
            (1e-300, -37.047_096_299_361_2),
            (1e-20, -9.262_340_089_798_405),
            (1e-10, -6.361_340_902_404_056),
            (0.001, -3.090_232_306_167_813),
            (0.024_25, -1.972_961_051_311_884_5),
            (0.025, -1.959_963_984_540_053_8),
            (0.3, -0.524_400_512_708_040_7),
            (0.975, 1.959_963_984_540_053_6),
            (0.999_999, 4.753_424_308_817_089),
        ];
        for (p, want) in cases {
            assert!(rel(normal_quantile(p), want) < 1e-15, "Φ⁻¹({p}) = {} want {want}", normal_quantile(p));
        }
        assert_eq!(normal_quantile(0.5), 0.0);
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert!(normal_quantile(1.5).is_nan() && normal_quantile(f64::NAN).is_nan());
        assert!(rel(normal_quantile(1e-320), -38.26) < 1e-3, "subnormal p still lands in the tail");
    }

    #[test]
    fn normal_cdf_and_quantile_invert_each_other() {
        for i in 1..200 {
            let p = i as f64 / 200.0;
            assert!((normal_cdf(normal_quantile(p)) - p).abs() < 4e-16, "p = {p}");
        }
        // Each tail through the function that is accurate in it.
        for x in [-30.0, -8.0, -3.0, -0.7] {
            let (c, s) = (normal_cdf(x), normal_sf(-x));
            assert!(c == s && rel(normal_quantile(c), x) < 1e-13, "x = {x}");
            assert!(rel(normal_isf(normal_sf(-x)), -x) < 1e-13, "x = {x}");
        }
    }

    #[test]
    fn student_t_has_its_closed_forms() {
        // df = 1 is Cauchy; df = 2 has sf = ½ (1 − t/√(t² + 2)); df = ∞ is the normal.
        for t in [0.1, 1.0, 3.0, 40.0] {
            assert!(rel(student_t_sf(t, 1.0), 0.5 - t.atan() / PI) < 1e-13, "cauchy {t}");
            assert!(rel(student_t_sf(t, 2.0), 0.5 * (1.0 - t / (t * t + 2.0).sqrt())) < 1e-12, "df 2 {t}");
            assert!(rel(student_t_sf(t, 1e14), normal_sf(t)) < 1e-9, "df 1e14 {t}");
            assert!(rel(student_t_cdf(-t, 7.5), student_t_sf(t, 7.5)) == 0.0);
        }
        // Large df: Fisher's expansion Φ̄(t) + φ(t)(t³ + t)/(4 df) is exact to ~t⁸/(20 df²).
        for t in [0.1, 1.0, 3.0, 5.0] {
            let df = 1e9;
            let fisher = normal_sf(t) + normal_pdf(t) * (t * t * t + t) / (4.0 * df);
            assert!(rel(student_t_sf(t, df), fisher) < 1e-13, "df {df}, t {t}: {} vs {fisher}", student_t_sf(t, df));
        }
        for q in [1e-12, 1e-4, 0.025, 0.2, 0.45] {
            for df in [1.0, 2.0, 2.5, 19.281_801_059_147_934, 942.7, 1e7, 1e12] {
                let t = student_t_isf(q, df);
                assert!(rel(student_t_sf(t, df), q) < 1e-12, "sf(isf({q}, {df})) = {}", student_t_sf(t, df));
                assert_eq!(student_t_quantile(q, df), -t);
            }
        }
        assert_eq!(student_t_quantile(0.5, 3.0), 0.0);
        assert!(student_t_sf(1.0, 0.0).is_nan() && student_t_quantile(-0.1, 3.0).is_nan());
    }

    #[test]
    fn student_t_matches_arbitrary_precision() {
        // mpmath 1.4.1 at 40 digits: ½ betainc(df/2, ½, 0, df/(df + t²), regularized=True).
        let cases = [
            (2.0, 19.281_801_059_147_934, 0.029_893_330_406_731_3),
            (1.677_719_850_452_167_8, 942.773_278_880_880_3, 0.046_866_625_110_021_129),
            (3.0, 45.5, 0.002_184_353_007_375_785_3),
            (2.0, 1e6, 0.022_750_266_925_659_604),
            (3.0, 1e9, 0.001_349_898_064_868_957_8),
            (6.0, 1e4, 1.020_809_236_461_307_7e-9),
            (30.0, 35.0, 7.338_227_188_170_756e-27),
            (0.3, 1e12, 0.382_088_577_811_078_5),
        ];
        for (t, df, want) in cases {
            assert!(rel(student_t_sf(t, df), want) < 1e-13, "sf({t}, {df}) = {:e} want {want:e}", student_t_sf(t, df));
        }
    }

    #[test]
    fn chi_square_has_its_closed_forms() {
        // df = 1: P(χ² > x) = erfc(√(x/2)); df = 2: e^(−x/2); df = 4: e^(−x/2) (1 + x/2).
        for x in [0.01, 0.18, 1.0, 6.1, 25.0, 300.0] {
            assert!(rel(chi_square_sf(x, 1.0), 2.0 * normal_sf(x.sqrt())) < 1e-13, "df 1, x {x}");
            assert!(rel(chi_square_sf(x, 4.0), (-0.5 * x).exp() * (1.0 + 0.5 * x)) < 1e-13, "df 4, x {x}");
        }
        assert_eq!(chi_square_sf(0.0, 3.0), 1.0);
        assert_eq!(chi_square_sf(f64::INFINITY, 3.0), 0.0);
        assert!(chi_square_sf(1.0, 0.0).is_nan());
    }
}
