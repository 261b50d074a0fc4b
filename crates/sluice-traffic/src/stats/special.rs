//! The special functions under the distributions of `dist.rs`: erfc (and its scaled form),
//! ln Γ, the regularized incomplete beta function and the regularized upper incomplete gamma
//! function, each to near full double precision. Reference README §1.1–§1.4 and §3 need them
//! through Φ, F_t and the χ² survival function.
//!
//! Where each method comes from:
//! - erfc: its Maclaurin series below 1 (Abramowitz & Stegun 7.1.5) and, above, the even
//!   contraction of Laplace's continued fraction (A&S 7.1.14) evaluated by the modified Lentz
//!   method (Numerical Recipes 3rd ed. §5.2); both converge to full precision, which short
//!   rational fits do not promise in the far tail;
//! - ln Γ: Stirling's series with eight Bernoulli terms once the argument is ≥ 10, the
//!   recurrence Γ(x + 1) = xΓ(x) below (A&S 6.1.40, 6.1.15);
//! - I_x(a, b): its continued fraction (A&S 26.5.8; Numerical Recipes §6.4 `betacf`) and, for
//!   b = ½ and a ≥ 15 near x = 1 (Student's t at large df), the asymptotic expansion of
//!   Didonato & Morris (ACM TOMS Algorithm 708, 1992, `bgrat`): the fraction sees only x and
//!   loses ε·df/t² there (2e-8 at df = 1e9), the expansion works from ln(1 − y) and does not;
//! - Q(a, x): its series or its continued fraction (A&S 6.5.29, 6.5.31; Numerical Recipes §6.2).

use std::f64::consts::{FRAC_2_SQRT_PI, PI};

/// ln √(2π).
const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8;
/// Lentz's stand-in for a zero denominator.
const TINY: f64 = 1e-300;
/// A bound on the terms of a continued fraction, far above what any argument here needs (the
/// beta fraction's worst case grows as √max(a, b)); it only guards against an endless loop.
const MAX_TERMS: usize = 1_000_000;

/// exp(−scale·x²) for scale 1 or ½, without the rounding of x² (which costs x²·2⁻⁵³ relative,
/// 1e-13 at x = 27): x is split into a 26-bit head, whose square is exact, and a tail.
pub(super) fn exp_neg_square(x: f64, scale: f64) -> f64 {
    let head = f64::from_bits(x.to_bits() & 0xffff_ffff_f800_0000);
    let tail = x - head;
    (-scale * head * head).exp() * (-scale * tail * (x + head)).exp()
}

/// The complementary error function, to about 1e-15 relative over its whole range (the tail
/// included, which is where p-values live).
pub(super) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        // erfc(x) ≥ 1 here: subtracting loses nothing.
        return 2.0 - erfc(-x);
    }
    if x < 1.0 {
        // erfc ≥ 0.157 here, so 1 − erf loses under 3 bits; Laplace's fraction below 1 would
        // need hundreds of terms and lose more (4e-14 at 0.5).
        return 1.0 - erf_series(x);
    }
    if x > 27.3 {
        // Below the smallest subnormal.
        return 0.0;
    }
    exp_neg_square(x, 1.0) * erfcx_fraction(x)
}

/// The scaled complement e^(x²) erfc(x) for x ≥ 0, which stays representable where erfc
/// underflows.
fn erfcx(x: f64) -> f64 {
    if x < 1.0 {
        (x * x).exp() * erfc(x)
    } else {
        erfcx_fraction(x)
    }
}

/// e^(x²) erfc(x) for x ≥ 1 by the even contraction of Laplace's continued fraction:
/// 2x/√π · 1/(2x²+1 − 1·2/(2x²+5 − 3·4/(2x²+9 − …))), some 80 terms at x = 1, 10 at x = 4.
fn erfcx_fraction(x: f64) -> f64 {
    let two_x2 = 2.0 * x * x;
    let mut f = two_x2 + 1.0;
    let (mut c, mut d) = (f, 0.0);
    for k in 1..MAX_TERMS {
        let k = k as f64;
        let a = -(2.0 * k - 1.0) * (2.0 * k);
        let b = two_x2 + 1.0 + 4.0 * k;
        d = b + a * d;
        if d == 0.0 {
            d = TINY;
        }
        c = b + a / c;
        if c == 0.0 {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    x * FRAC_2_SQRT_PI / f
}

/// erf by its Maclaurin series, for |x| < 1: the terms alternate but never exceed x, so the
/// sum loses nothing to cancellation, and 20-odd of them reach the last bit.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let (mut term, mut sum) = (x, x);
    for n in 1..60 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() <= sum.abs() * f64::EPSILON * 0.5 {
            break;
        }
    }
    FRAC_2_SQRT_PI * sum
}

/// Stirling's series lnΓ(z) − [(z − ½) ln z − z + ln √(2π)] for z ≥ 10, where eight terms leave
/// an error below 1e-18.
fn stirling_tail(z: f64) -> f64 {
    // B₂ₖ / (2k(2k − 1)), k = 1..8.
    const COEF: [f64; 8] = [
        1.0 / 12.0,
        -1.0 / 360.0,
        1.0 / 1260.0,
        -1.0 / 1680.0,
        1.0 / 1188.0,
        -691.0 / 360_360.0,
        1.0 / 156.0,
        -3617.0 / 122_400.0,
    ];
    let w = 1.0 / (z * z);
    let mut sum = 0.0;
    for c in COEF.iter().rev() {
        sum = sum * w + c;
    }
    sum / z
}

/// lnΓ(x) for x > 0, to about 1e-15 absolute (what matters when it sits in an exponent).
pub(super) fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    // Γ(x) = Γ(x + k) / (x (x + 1) … (x + k − 1)) carries small arguments up to Stirling's range.
    let (mut z, mut product) = (x, 1.0);
    while z < 10.0 {
        product *= z;
        z += 1.0;
    }
    (z - 0.5) * z.ln() - z + LN_SQRT_2PI + stirling_tail(z) - product.ln()
}

/// lnΓ(a + b) − lnΓ(a), arranged for large `a` so that the two large logarithms cancel in
/// algebra rather than in floating point (they are ~a ln a each, the difference ~b ln a).
pub(super) fn ln_gamma_shift(a: f64, b: f64) -> f64 {
    if a < 10.0 {
        return ln_gamma(a + b) - ln_gamma(a);
    }
    // (a+b−½)ln(a+b) − (a−½)ln a = (a−½) ln(1 + b/a) + b ln(a+b).
    (a - 0.5) * (b / a).ln_1p() + b * (a + b).ln() - b + stirling_tail(a + b) - stirling_tail(a)
}

/// ln B(a, b) = lnΓ(a) + lnΓ(b) − lnΓ(a + b).
fn ln_beta(a: f64, b: f64) -> f64 {
    let (small, large) = if a < b { (a, b) } else { (b, a) };
    ln_gamma(small) - ln_gamma_shift(large, small)
}

/// The regularized incomplete beta function I_x(a, b), given both x and y = 1 − x so that a
/// caller that knows the small one exactly (t²/(ν + t²) for Student's t) loses nothing to 1 − x.
pub(super) fn beta_reg(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    // ln x from whichever of x, y is the smaller, where ln_1p keeps its precision.
    let ln_x = if x > 0.5 { (-y).ln_1p() } else { x.ln() };
    let ln_y = if y > 0.5 { (-x).ln_1p() } else { y.ln() };
    let front = (a * ln_x + b * ln_y - ln_beta(a, b)).exp();
    // The fraction converges fast on this side of the mean; on the other side use the symmetry
    // I_x(a, b) = 1 − I_y(b, a).
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, y) / b
    }
}

/// The continued fraction of I_x(a, b) (Numerical Recipes `betacf`), by modified Lentz.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    let fix = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / fix(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..MAX_TERMS {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / fix(1.0 + aa * d);
        c = fix(1.0 + aa / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() <= f64::EPSILON {
            break;
        }
    }
    h
}

/// The regularized upper incomplete gamma function Q(a, x) = Γ(a, x)/Γ(a).
pub(super) fn gamma_reg_upper(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // P(a, x) = front · Σ xⁿ / (a (a+1) … (a+n)), then Q = 1 − P (P is the small one here).
        let (mut ap, mut term) = (a, 1.0 / a);
        let mut sum = term;
        for _ in 0..MAX_TERMS {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() <= sum.abs() * f64::EPSILON {
                break;
            }
        }
        1.0 - front * sum
    } else {
        // Q(a, x) = front · 1/(x+1−a − 1·(1−a)/(x+3−a − 2·(2−a)/(x+5−a − …))).
        let fix = |v: f64| if v.abs() < TINY { TINY } else { v };
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / fix(b);
        let mut h = d;
        for i in 1..MAX_TERMS {
            let i = i as f64;
            let an = -i * (i - a);
            b += 2.0;
            d = 1.0 / fix(an * d + b);
            c = fix(b + an / c);
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() <= f64::EPSILON {
                break;
            }
        }
        front * h
    }
}

/// I_x(a, ½) for a ≥ 15 by the asymptotic expansion of Didonato & Morris (ACM TOMS 18, 1992,
/// Algorithm 708, `bgrat`: I_x(a, b) = M Σ pₙ Jₙ(b, u), u = −(a + (b−1)/2) ln x), with b = ½,
/// where the incomplete gamma function it rests on is Q(½, u) = erfc √u. `None` when the series
/// does not settle in 30 terms (x far from 1, i.e. t² not small against df).
pub(super) fn beta_reg_half_large_a(a: f64, x: f64, y: f64) -> Option<f64> {
    const B: f64 = 0.5;
    const TERMS: usize = 30;
    let nu = a + 0.5 * (B - 1.0);
    let ln_x = if y > 0.375 { x.ln() } else { (-y).ln_1p() };
    let u = -nu * ln_x;
    if u.is_nan() || u <= 0.0 {
        return None;
    }
    // r = e^(−u) u^b / Γ(b); the expansion carries Q(b, u)/r, scaled so that neither underflows.
    let ln_r = 0.5 * u.ln() - u - 0.5 * PI.ln();
    let q_over_r = if u < 0.25 { erfc(u.sqrt()) / ln_r.exp() } else { PI.sqrt() * erfcx(u.sqrt()) / u.sqrt() };
    // ln M = ln r + ln Γ(a + b) − ln Γ(a) − b ln ν.
    let ln_m = ln_r + ln_gamma_shift(a, B) - B * nu.ln();
    let v = 0.25 / (nu * nu);
    let t2 = 0.25 * ln_x * ln_x;
    let (mut j, mut sum, mut t, mut cn, mut n2) = (q_over_r, q_over_r, 1.0, 1.0, 0.0);
    let (mut c, mut d) = ([0.0; TERMS], [0.0; TERMS]);
    for n in 1..=TERMS {
        let bp2n = B + n2;
        j = (bp2n * (bp2n + 1.0) * j + (u + bp2n + 1.0) * t) * v;
        n2 += 2.0;
        t *= t2;
        cn /= n2 * (n2 + 1.0);
        c[n - 1] = cn;
        let mut s = 0.0;
        let mut coef = B - n as f64;
        for i in 1..n {
            s += coef * c[i - 1] * d[n - 1 - i];
            coef += B;
        }
        d[n - 1] = (B - 1.0) * cn + s / n as f64;
        let dj = d[n - 1] * j;
        sum += dj;
        if sum.is_nan() || sum <= 0.0 {
            return None;
        }
        if dj.abs() <= f64::EPSILON * sum {
            return Some((ln_m + sum.ln()).exp());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::rel;

    #[test]
    fn erfc_matches_the_c_library_over_its_range() {
        // Python's math.erfc (the platform libm).
        let cases = [
            (0.1, 0.887_537_083_981_715_2),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (1.5, 0.033_894_853_524_689_274),
            (2.0, 0.004_677_734_981_047_265),
            (2.5, 0.000_406_952_017_444_958_9),
            (3.0, 2.209_049_699_858_543_8e-5),
            (5.0, 1.537_459_794_428_035_1e-12),
            (10.0, 2.088_487_583_762_545e-45),
            (26.0, 5.663_192_408_856_143e-296),
        ];
        for (x, want) in cases {
            assert!(rel(erfc(x), want) < 2e-15, "erfc({x}) = {} want {want}", erfc(x));
            assert!(rel(erfc(-x), 2.0 - want) < 2e-16, "erfc(-{x})");
        }
        assert_eq!(erfc(0.0), 1.0);
        assert_eq!(erfc(30.0), 0.0);
        assert!(erfc(f64::NAN).is_nan());
    }

    #[test]
    fn ln_gamma_matches_the_c_library() {
        // Python's math.lgamma.
        for (x, want) in
            [(0.5, 0.572_364_942_924_700_4), (3.7, 1.428_072_326_665_388_3), (471.3, 2_427.626_083_163_173_5)]
        {
            assert!((ln_gamma(x) - want).abs() < 4e-15 * want.abs().max(1.0), "lnΓ({x}) = {}", ln_gamma(x));
        }
        // Γ(1) = Γ(2) = 1, reached through ln 9! subtracted from Stirling at 10: absolute error.
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
    }

    #[test]
    fn the_beta_expansion_agrees_with_the_fraction_where_both_work() {
        for df in [30.0, 60.5, 300.0] {
            for t in [0.2, 1.0, 2.5, 6.0] {
                let (x, y) = (df / (df + t * t), t * t / (df + t * t));
                let expansion = beta_reg_half_large_a(0.5 * df, x, y).expect("converges near x = 1");
                assert!(rel(expansion, beta_reg(0.5 * df, 0.5, x, y)) < 1e-13, "df {df}, t {t}");
            }
        }
        // Far from x = 1 it declines, and the fraction (well conditioned there) answers.
        assert_eq!(beta_reg_half_large_a(15.0, 30.0 / (30.0 + 1600.0), 1600.0 / (30.0 + 1600.0)), None);
    }

    #[test]
    fn incomplete_gamma_has_its_closed_forms() {
        // Q(1, x) = e^(−x); Q(½, x) = erfc √x; Q(2, x) = e^(−x)(1 + x).
        for x in [0.005, 0.09, 0.5, 3.05, 12.5, 150.0] {
            assert!(rel(gamma_reg_upper(1.0, x), (-x).exp()) < 1e-13, "a 1, x {x}");
            assert!(rel(gamma_reg_upper(0.5, x), erfc(x.sqrt())) < 1e-13, "a ½, x {x}");
            assert!(rel(gamma_reg_upper(2.0, x), (-x).exp() * (1.0 + x)) < 1e-13, "a 2, x {x}");
        }
    }
}
