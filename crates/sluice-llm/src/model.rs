//! A llama-architecture decoder read from GGUF, run on candle's quantized matmuls, with the KV
//! cache held per sequence outside the model.
//!
//! candle's own `quantized_llama::ModelWeights` keeps one KV cache inside the model, so it can
//! decode one sequence at a time. Continuous batching needs the opposite: one forward pass over
//! the new tokens of many sequences at once (a prompt chunk of one, the next token of others),
//! each attending to its own cache. The dense parts (projections, MLP, output head) run once on
//! all rows stacked, which is where batching pays; attention runs per sequence on plain `f32`
//! slices, parallel over query rows.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use rayon::prelude::*;

use crate::qlinear::QLinear;

pub type Result<T> = candle_core::Result<T>;

/// Longest context a GGUF may declare: the rotary tables are sized by it (at 128 dims per head,
/// 128 Ki positions take 64 MiB).
const MAX_CONTEXT: usize = 1 << 17;

/// A GGUF file's scalar metadata (chat template, special token ids, ...).
pub type Metadata = std::collections::HashMap<String, gguf_file::Value>;

/// The shape of the network, from the GGUF metadata.
#[derive(Clone, Debug)]
pub struct LlamaShape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub dim: usize,
    pub vocab: usize,
    /// The longest sequence (prompt and generated tokens) the model was trained for.
    pub context: usize,
    /// NEOX rotary convention (pairs `i` and `i + d/2`) rather than llama's interleaved pairs.
    pub rope_neox: bool,
}

impl LlamaShape {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Bytes of KV cache one token of one sequence takes.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layer * 2 * self.kv_dim() * std::mem::size_of::<f32>()
    }
}

struct Layer {
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    gate: QLinear,
    down: QLinear,
    up: QLinear,
    attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
}

pub struct Llama {
    pub shape: LlamaShape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    /// `cos`/`sin` of every position: `[context][head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    device: Device,
}

/// One sequence's keys and values, per layer `[position][kv_head][head_dim]`.
pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl KvCache {
    pub fn new(shape: &LlamaShape) -> KvCache {
        KvCache { layers: (0..shape.n_layer).map(|_| (Vec::new(), Vec::new())).collect(), len: 0 }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// New tokens of one sequence for one forward pass.
pub struct Chunk<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub logits: Logits,
}

/// Which positions of a chunk need logits. The output head is the largest matmul of a step
/// (vocabulary × width per row), so a prompt pays for it at every position only when it is
/// scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt's first chunks).
    None,
    /// After the last token: what the next token is sampled from.
    Last,
    /// After every token (scoring a prompt).
    All,
}

/// Rows of the output head computed together: bounds the logits held at once (64 rows of a
/// 49k vocabulary are 12 MiB) whatever the length of a scored prompt chunk.
const HEAD_ROWS: usize = 64;

fn metadata<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata.get(key).ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no '{key}'")))
}

impl Llama {
    /// Reads a llama-architecture GGUF file (the layout llama.cpp writes).
    pub fn from_gguf<R: Read + Seek>(ct: gguf_file::Content, reader: &mut R, device: &Device) -> Result<Llama> {
        let arch = metadata(&ct, "general.architecture")?.to_string()?.clone();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "GGUF architecture '{other}' is not supported (llama, mistral, qwen2 are)"
                )))
            }
        };
        let get = |k: &str| metadata(&ct, &format!("{arch}.{k}"));
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = get("attention.head_count_kv")?.to_u32()? as usize;
        let n_layer = get("block_count")?.to_u32()? as usize;
        let dim = get("embedding_length")?.to_u32()? as usize;
        let eps = get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let base = get("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        let context = get("context_length").and_then(|v| v.to_u32()).unwrap_or(4096) as usize;
        // A file's numbers are checked before anything divides by them or sizes a table.
        if n_head == 0
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
            || !dim.is_multiple_of(n_head)
            || !(dim / n_head).is_multiple_of(2)
        {
            return Err(candle_core::Error::Msg(format!(
                "GGUF shape not supported: {n_head} heads, {n_kv_head} KV heads, width {dim} (heads must divide the width into an even head size, KV heads the heads)"
            )));
        }
        if context == 0 || context > MAX_CONTEXT {
            return Err(candle_core::Error::Msg(format!(
                "GGUF context length {context} is not supported (1 to {MAX_CONTEXT})"
            )));
        }
        let head_dim = dim / n_head;
        let rope_dim = get("rope.dimension_count").and_then(|v| v.to_u32()).map(|d| d as usize).unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(candle_core::Error::Msg(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim} dims) are not supported"
            )));
        }
        let tensor = |r: &mut R, name: &str| ct.tensor(r, name, device);
        let embed_q = tensor(reader, "token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let (vocab, width) = embed.dims2()?;
        if width != dim {
            candle_core::bail!("GGUF token embeddings are {width} wide, the metadata says {dim}");
        }
        let norm = RmsNorm::from_qtensor(tensor(reader, "output_norm.weight")?, eps)?;
        // Tied embeddings: the output head reuses the token embedding.
        let output: QTensor = match tensor(reader, "output.weight") {
            Ok(t) => t,
            Err(_) => embed_q,
        };
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            // Shapes are checked here: the attention slices rows by them.
            let mut q = |name: &str, rows: Option<usize>, cols: usize| -> Result<(QLinear, usize)> {
                let name = format!("blk.{i}.{name}.weight");
                let t = tensor(reader, &name)?;
                let (r, c) = t.shape().dims2()?;
                if rows.is_some_and(|want| want != r) || c != cols {
                    candle_core::bail!("GGUF tensor {name} has shape ({r}, {c}), expected ({rows:?}, {cols})");
                }
                Ok((QLinear::from_qtensor(t)?, r))
            };
            let kv_dim = n_kv_head * head_dim;
            let (wq, _) = q("attn_q", Some(dim), dim)?;
            let (wk, _) = q("attn_k", Some(kv_dim), dim)?;
            let (wv, _) = q("attn_v", Some(kv_dim), dim)?;
            let (wo, _) = q("attn_output", Some(dim), dim)?;
            let (gate, ff) = q("ffn_gate", None, dim)?;
            let (up, _) = q("ffn_up", Some(ff), dim)?;
            let (down, _) = q("ffn_down", Some(dim), ff)?;
            let attn_norm = RmsNorm::from_qtensor(tensor(reader, &format!("blk.{i}.attn_norm.weight"))?, eps)?;
            let ffn_norm = RmsNorm::from_qtensor(tensor(reader, &format!("blk.{i}.ffn_norm.weight"))?, eps)?;
            layers.push(Layer { wq, wk, wv, wo, gate, down, up, attn_norm, ffn_norm });
        }
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(context * half);
        let mut sin = Vec::with_capacity(context * half);
        for pos in 0..context {
            for i in 0..half {
                let theta = 1.0 / base.powf((2 * i) as f32 / head_dim as f32);
                let a = pos as f32 * theta;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Llama {
            shape: LlamaShape { n_layer, n_head, n_kv_head, head_dim, dim, vocab, context, rope_neox },
            embed,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// Loads the model file at `path`, returning it with the GGUF metadata.
    pub fn load(path: &std::path::Path) -> Result<(Llama, Metadata)> {
        let mut f = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::Msg(format!("cannot open {}: {e}", path.display())))?;
        let ct = gguf_file::Content::read(&mut f).map_err(|e| e.with_path(path))?;
        // The scalars only: the vocabulary and merge arrays are large, and the tokenizer.json
        // has them.
        let meta = ct
            .metadata
            .iter()
            .filter(|(_, v)| !matches!(v, gguf_file::Value::Array(_)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let model = Llama::from_gguf(ct, &mut f, &Device::Cpu)?;
        Ok((model, meta))
    }

    /// One forward pass over the new tokens of several sequences. Appends their keys and
    /// values to each sequence's cache and returns, for each chunk that asked, the logits after
    /// its last token. (Chunks asking for [`Logits::All`] get their last row here too.)
    pub fn forward(&self, chunks: &mut [Chunk<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        let ends: Vec<usize> = chunks.iter().map(|c| c.tokens.len().saturating_sub(1)).collect();
        let mut out: Vec<Option<Vec<f32>>> = chunks.iter().map(|_| None).collect();
        self.forward_each(chunks, |c, j, row| {
            if j == ends[c] {
                out[c] = Some(row.to_vec());
            }
        })?;
        Ok(out)
    }

    /// One forward pass over the new tokens of several sequences. Appends their keys and
    /// values to each sequence's cache and calls `each(chunk, position in chunk, logits)` for
    /// every row its chunk asked for, in order, without keeping them all at once.
    pub fn forward_each(&self, chunks: &mut [Chunk<'_>], mut each: impl FnMut(usize, usize, &[f32])) -> Result<()> {
        let s = &self.shape;
        let ids: Vec<u32> = chunks.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let rows = ids.len();
        if rows == 0 {
            return Ok(());
        }
        for c in chunks.iter() {
            if c.cache.len + c.tokens.len() > s.context {
                return Err(candle_core::Error::Msg(format!(
                    "sequence of {} tokens is longer than the model's context ({})",
                    c.cache.len + c.tokens.len(),
                    s.context
                )));
            }
        }
        let mut x = self.embed.index_select(&Tensor::new(ids.as_slice(), &self.device)?, 0)?;
        let mut attn = vec![0f32; rows * s.dim];
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let mut q = layer.wq.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let mut k = layer.wk.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let v = layer.wv.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let mut row = 0;
            for c in chunks.iter_mut() {
                let n = c.tokens.len();
                let p0 = c.cache.len;
                for j in 0..n {
                    let pos = p0 + j;
                    self.rope(&mut q[(row + j) * s.dim..(row + j + 1) * s.dim], pos);
                    self.rope(&mut k[(row + j) * s.kv_dim()..(row + j + 1) * s.kv_dim()], pos);
                }
                let (kc, vc) = &mut c.cache.layers[li];
                kc.extend_from_slice(&k[row * s.kv_dim()..(row + n) * s.kv_dim()]);
                vc.extend_from_slice(&v[row * s.kv_dim()..(row + n) * s.kv_dim()]);
                attend(s, &q[row * s.dim..(row + n) * s.dim], kc, vc, p0, &mut attn[row * s.dim..(row + n) * s.dim]);
                row += n;
            }
            let a = Tensor::from_slice(&attn, (rows, s.dim), &self.device)?;
            x = (layer.wo.forward(&a)? + x)?;
            let h = layer.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let m = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            x = (m + x)?;
        }
        // (row of x, chunk, position in chunk) of every row whose logits are wanted.
        let mut wanted: Vec<(u32, usize, usize)> = Vec::new();
        let mut row = 0;
        for (ci, c) in chunks.iter_mut().enumerate() {
            let n = c.tokens.len();
            c.cache.len += n;
            let from = match c.logits {
                Logits::None => n,
                Logits::Last => n.saturating_sub(1),
                Logits::All => 0,
            };
            wanted.extend((from..n).map(|j| ((row + j) as u32, ci, j)));
            row += n;
        }
        for block in wanted.chunks(HEAD_ROWS) {
            let idx: Vec<u32> = block.iter().map(|w| w.0).collect();
            let xb = x.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 0)?;
            let logits = self.output.forward(&self.norm.forward(&xb)?)?.to_dtype(DType::F32)?;
            let width = logits.dim(1)?;
            let logits = logits.flatten_all()?.to_vec1::<f32>()?;
            for (w, l) in block.iter().zip(logits.chunks_exact(width)) {
                each(w.1, w.2, l);
            }
        }
        Ok(())
    }

    /// Rotary position embedding of one row of heads, in place.
    fn rope(&self, row: &mut [f32], pos: usize) {
        let d = self.shape.head_dim;
        let half = d / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(d) {
            for i in 0..half {
                let (a, b) = if self.shape.rope_neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// Causal attention of `n` query rows (positions `p0..p0 + n`) over a sequence's cache, which
/// already holds those positions.
fn attend(s: &LlamaShape, q: &[f32], k: &[f32], v: &[f32], p0: usize, out: &mut [f32]) {
    let hd = s.head_dim;
    let kv_dim = s.kv_dim();
    let group = s.n_head / s.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let one_row = |(j, (q_row, out_row)): (usize, (&[f32], &mut [f32]))| {
        let visible = p0 + j + 1;
        let mut scores = vec![0f32; visible];
        for h in 0..s.n_head {
            let qh = &q_row[h * hd..(h + 1) * hd];
            let kvh = h / group;
            let mut max = f32::NEG_INFINITY;
            for (t, sc) in scores.iter_mut().enumerate() {
                let kt = &k[t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
                *sc = dot(qh, kt) * scale;
                max = max.max(*sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let oh = &mut out_row[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            for (t, sc) in scores.iter().enumerate() {
                let w = sc / sum;
                let vt = &v[t * kv_dim + kvh * hd..t * kv_dim + (kvh + 1) * hd];
                for (o, x) in oh.iter_mut().zip(vt) {
                    *o += w * x;
                }
            }
        }
    };
    let rows = q.chunks_exact(s.dim).zip(out.chunks_exact_mut(s.dim)).enumerate();
    // Spreading a few short rows over threads costs more than it saves.
    if (p0 + q.len() / s.dim) * q.len() / s.dim < 4096 {
        rows.for_each(one_row);
    } else {
        rows.collect::<Vec<_>>().into_par_iter().for_each(one_row);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums let the compiler keep AVX lanes busy.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}
