//! A Q4_1 linear layer whose matmul reads each weight block once for all the rows of a step.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 weights (its `vec_dot` for them is the portable
//! one, 80 % of a decoding step in a profile), and its matmul works one activation row at a
//! time, so a step of 8 sequences cost 8 steps of one. Here a weight block is unpacked once
//! and multiplied (AVX2 `maddubs`) with the same block of up to four activation rows, which is
//! what lets continuous batching pay on a CPU. The arithmetic is ggml's and candle's: Q8_1
//! activations (per 32 values: an f16 scale and the f16 sum), integer dot products, then
//! `d_w * d_x * sum + m_w * s_x`.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use rayon::prelude::*;

const QK: usize = 32;

#[derive(Clone, Copy)]
#[repr(C)]
struct WBlock {
    d: f32,
    m: f32,
    /// Low nibbles: values 0..16 of the block; high nibbles: 16..32.
    qs: [u8; 16],
}

/// Activation rows quantized to Q8_1.
struct Q8Rows {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

fn quantize_rows(x: &[f32], k: usize) -> Q8Rows {
    let blocks = x.len() / QK;
    let mut q = Q8Rows { qs: vec![0; x.len()], d: Vec::with_capacity(blocks), s: Vec::with_capacity(blocks) };
    debug_assert_eq!(k % QK, 0);
    for (xb, qb) in x.chunks_exact(QK).zip(q.qs.chunks_exact_mut(QK)) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (v, o) in xb.iter().zip(qb.iter_mut()) {
            *o = (v * id).round() as i8;
            sum += *o as i32;
        }
        // Stored as f16, as ggml's block_q8_1 keeps them.
        let dh = f16::from_f32(d);
        q.d.push(dh.to_f32());
        q.s.push(f16::from_f32(f16::from_f32(sum as f32).to_f32() * dh.to_f32()).to_f32());
    }
    q
}

/// candle's switch to run every quantized matmul on dequantized `f32` weights (no int8
/// activations). Honoured here too, so that Sluice and candle can be compared without the
/// rounding noise of activation quantization: with it, both compute the same numbers.
fn dequantize_all() -> bool {
    std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub enum QLinear {
    Q4_1 {
        n: usize,
        k: usize,
        w: Vec<WBlockRow>,
    },
    /// Other quantizations: candle's own matmul.
    Candle(QMatMul),
}

/// The blocks of one output column (one weight row).
pub struct WBlockRow(Vec<WBlock>);

impl QLinear {
    pub fn from_qtensor(t: QTensor) -> candle_core::Result<QLinear> {
        let (n, k) = t.shape().dims2()?;
        if t.dtype() != GgmlDType::Q4_1 || k % QK != 0 || dequantize_all() {
            return Ok(QLinear::Candle(QMatMul::from_qtensor(t)?));
        }
        let raw = t.data()?;
        let kb = k / QK;
        // ggml's block_q4_1: f16 d, f16 m, 16 bytes of nibbles.
        let blocks: Vec<WBlock> = raw
            .chunks_exact(20)
            .map(|b| WBlock {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                qs: b[4..20].try_into().expect("16 bytes"),
            })
            .collect();
        if blocks.len() != n * kb {
            candle_core::bail!("Q4_1 tensor of shape ({n}, {k}) holds {} blocks", blocks.len());
        }
        let w = blocks.chunks_exact(kb).map(|r| WBlockRow(r.to_vec())).collect();
        Ok(QLinear::Q4_1 { n, k, w })
    }

    /// `x`: `[rows, k]`; the result is `[rows, n]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            QLinear::Candle(m) => m.forward(x),
            QLinear::Q4_1 { n, k, w } => {
                let (rows, kx) = x.dims2()?;
                if kx != *k {
                    candle_core::bail!("linear layer takes {k} inputs, got {kx}");
                }
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let out = matmul(w, *n, *k, &xs, rows);
                Tensor::from_vec(out, (rows, *n), x.device())
            }
        }
    }
}

fn matmul(w: &[WBlockRow], n: usize, k: usize, x: &[f32], rows: usize) -> Vec<f32> {
    let q = quantize_rows(x, k);
    let kb = k / QK;
    // Columns per task: enough work to pay for the hand-off, small enough to balance.
    const COLS: usize = 32;
    let one_chunk = |chunk: &[WBlockRow]| {
        let mut out = vec![0f32; chunk.len() * rows];
        for (c, wrow) in chunk.iter().enumerate() {
            let dst = &mut out[c * rows..(c + 1) * rows];
            let mut r = 0;
            while r < rows {
                let take = (rows - r).min(4);
                dot_rows(&wrow.0, &q, kb, r, take, &mut dst[r..r + take]);
                r += take;
            }
        }
        out
    };
    // Waking the pool costs more than a small product takes.
    let cols: Vec<Vec<f32>> = if rows * n * k < 1 << 20 {
        w.chunks(COLS).map(one_chunk).collect()
    } else {
        w.par_chunks(COLS).map(one_chunk).collect()
    };
    let mut out = vec![0f32; rows * n];
    for (ci, chunk) in cols.iter().enumerate() {
        for (c, vals) in chunk.chunks_exact(rows).enumerate() {
            let col = ci * COLS + c;
            for (r, v) in vals.iter().enumerate() {
                out[r * n + col] = *v;
            }
        }
    }
    out
}

/// Dot products of one weight row with activation rows `r0..r0 + take` (take ≤ 4).
fn dot_rows(w: &[WBlock], q: &Q8Rows, kb: usize, r0: usize, take: usize, out: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the target features are enabled at compile time.
        unsafe {
            match take {
                1 => avx::dot::<1>(w, q, kb, r0, out),
                2 => avx::dot::<2>(w, q, kb, r0, out),
                3 => avx::dot::<3>(w, q, kb, r0, out),
                _ => avx::dot::<4>(w, q, kb, r0, out),
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    for (i, o) in out.iter_mut().enumerate().take(take) {
        *o = dot_scalar(w, q, kb, r0 + i);
    }
}

/// The portable reference (and the kernel where AVX2 is not compiled in).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"), allow(dead_code))]
fn dot_scalar(w: &[WBlock], q: &Q8Rows, kb: usize, row: usize) -> f32 {
    let mut sum = 0f32;
    for (b, wb) in w.iter().enumerate() {
        let xq = &q.qs[(row * kb + b) * QK..(row * kb + b + 1) * QK];
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (wb.qs[j] & 0x0F) as i32 * xq[j] as i32 + (wb.qs[j] >> 4) as i32 * xq[j + 16] as i32;
        }
        sum += isum as f32 * wb.d * q.d[row * kb + b] + wb.m * q.s[row * kb + b];
    }
    sum
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx {
    use std::arch::x86_64::*;

    use super::{Q8Rows, WBlock, QK};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot<const R: usize>(w: &[WBlock], q: &Q8Rows, kb: usize, r0: usize, out: &mut [f32]) {
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut msum = [0f32; R];
        for (b, wb) in w.iter().enumerate() {
            let packed = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(packed, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
            let w8 = _mm256_set_m128i(hi, lo);
            for r in 0..R {
                let idx = (r0 + r) * kb + b;
                let x8 = _mm256_loadu_si256(q.qs.as_ptr().add(idx * QK) as *const __m256i);
                // u8 weights (0..15) times i8 activations: pairs fit i16 without saturation.
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w8, x8), ones);
                let scale = _mm256_set1_ps(wb.d * *q.d.get_unchecked(idx));
                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[r]);
                msum[r] += wb.m * *q.s.get_unchecked(idx);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + msum[r];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_q4_1(n: usize, k: usize, seed: u32) -> QTensor {
        let mut s = seed;
        let vals: Vec<f32> = (0..n * k)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let t = Tensor::from_vec(vals, (n, k), &candle_core::Device::Cpu).unwrap();
        QTensor::quantize(&t, GgmlDType::Q4_1).unwrap()
    }

    #[test]
    fn matches_candles_q4_1_matmul_for_every_row_count() {
        let (n, k) = (70, 128);
        let theirs = QMatMul::from_qtensor(random_q4_1(n, k, 3)).unwrap();
        let ours = QLinear::from_qtensor(random_q4_1(n, k, 3)).unwrap();
        assert!(matches!(ours, QLinear::Q4_1 { .. }));
        for rows in [1, 2, 3, 4, 5, 9] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0).collect();
            let x = Tensor::from_vec(x, (rows, k), &candle_core::Device::Cpu).unwrap();
            let a: Vec<f32> = ours.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = theirs.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "rows {rows}, value {i}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn the_simd_kernel_agrees_with_the_scalar_reference() {
        let (n, k) = (8, 64);
        let QLinear::Q4_1 { w, .. } = QLinear::from_qtensor(random_q4_1(n, k, 9)).unwrap() else { panic!() };
        let x: Vec<f32> = (0..3 * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = quantize_rows(&x, k);
        for wrow in &w {
            let mut out = [0f32; 3];
            dot_rows(&wrow.0, &q, k / QK, 0, 3, &mut out);
            for (r, o) in out.iter().enumerate() {
                let s = dot_scalar(&wrow.0, &q, k / QK, r);
                assert!((o - s).abs() <= 1e-4 * (1.0 + s.abs()), "{o} vs {s}");
            }
        }
    }
}
