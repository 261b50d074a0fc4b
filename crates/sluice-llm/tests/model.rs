//! The generative model on the real SmolLM2-135M-Instruct GGUF of $SLUICE_MODELS: the same
//! logits as candle's own quantized llama, the same logits whether a sequence runs alone or
//! batched with others or scored at every position, and the generator's streams (greedy
//! answer, stop, length, cancel, log-probabilities).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use sluice_llm::model::{Chunk, KvCache, Llama, Logits};
use sluice_llm::{Event, FinishReason, Generator, GeneratorOptions, Message, SamplingParams};

fn model_dir() -> PathBuf {
    sluice_test_models::model_path("smollm2-135m-instruct")
}

const PROMPT: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap()
}

fn ids(text: &str) -> Vec<u32> {
    tokenizer().encode(text, false).unwrap().get_ids().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    sluice_llm::sample::argmax(v)
}

#[test]
fn logits_match_candles_quantized_llama() {
    let path = model_dir().join("model.gguf");
    let (ours, _) = Llama::load(&path).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut theirs =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();

    let prompt = ids(PROMPT);
    let mut cache = KvCache::new(&ours.shape);
    let mut tokens = prompt.clone();
    let mut generated = Vec::new();
    let mut pos = 0;
    for step in 0..8 {
        let feed = tokens[pos..].to_vec();
        let ours_logits = ours
            .forward(&mut [Chunk { tokens: &feed, cache: &mut cache, logits: Logits::Last }])
            .unwrap()
            .remove(0)
            .unwrap();
        let x = Tensor::new(feed.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs_logits: Vec<f32> = theirs.forward(&x, pos).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        // Not bit-identical: the AVX2 kernel and the attention loop sum in another order
        // (differences of ~1e-7), and the next layer's int8 activation quantization turns a
        // rounding flip into a visible step, so logits (spread over ~40) differ by up to ~1.5.
        // With candle's kernels and attention ops, one token per pass, they are identical;
        // with f32 weights (CANDLE_DEQUANTIZE_ALL) they agree to float precision (see
        // docs/benchmarks.md, LLM accuracy).
        let d = max_diff(&ours_logits, &theirs_logits);
        assert!(d < 1.5, "step {step}: logits differ by {d}");
        let next = argmax(&ours_logits);
        assert_eq!(next, argmax(&theirs_logits), "step {step}");
        pos = tokens.len();
        tokens.push(next);
        generated.push(next);
    }
    assert_eq!(tokenizer().decode(&generated, true).unwrap(), "The capital of France is Paris.");
}

#[test]
fn a_sequence_gets_the_same_logits_alone_and_batched() {
    let (m, _) = Llama::load(&model_dir().join("model.gguf")).unwrap();
    let a = ids(PROMPT);
    let b = ids("<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n");
    let alone = |p: &[u32]| {
        let mut c = KvCache::new(&m.shape);
        m.forward(&mut [Chunk { tokens: p, cache: &mut c, logits: Logits::Last }]).unwrap().remove(0).unwrap()
    };
    let (la, lb) = (alone(&a), alone(&b));
    // Together, and `a` fed in two chunks, the first without logits.
    let (mut ca, mut cb) = (KvCache::new(&m.shape), KvCache::new(&m.shape));
    let out = m
        .forward(&mut [
            Chunk { tokens: &a[..5], cache: &mut ca, logits: Logits::None },
            Chunk { tokens: &b, cache: &mut cb, logits: Logits::Last },
        ])
        .unwrap();
    assert!(out[0].is_none());
    let lb2 = out[1].clone().unwrap();
    let out = m.forward(&mut [Chunk { tokens: &a[5..], cache: &mut ca, logits: Logits::Last }]).unwrap();
    let la2 = out[0].clone().unwrap();
    // int8 activations are quantized per row, so stacking rows changes nothing.
    assert!(max_diff(&la, &la2) < 1e-3, "a: {}", max_diff(&la, &la2));
    assert!(max_diff(&lb, &lb2) < 1e-3, "b: {}", max_diff(&lb, &lb2));
    // And one decoding step of both together.
    let (na, nb) = (argmax(&la), argmax(&lb));
    let step = m
        .forward(&mut [
            Chunk { tokens: &[na], cache: &mut ca, logits: Logits::Last },
            Chunk { tokens: &[nb], cache: &mut cb, logits: Logits::Last },
        ])
        .unwrap();
    let mut a1 = a.clone();
    a1.push(na);
    assert!(max_diff(&alone(&a1), step[0].as_ref().unwrap()) < 1e-3);
    assert_eq!(ca.len(), a.len() + 1);
    assert_eq!(cb.len(), b.len() + 1);
}

#[test]
fn every_row_of_a_scored_chunk_gets_the_logits_of_its_prefix() {
    let (m, _) = Llama::load(&model_dir().join("model.gguf")).unwrap();
    let p = ids(PROMPT);
    let other = ids("Once upon a time");
    let (mut c, mut co) = (KvCache::new(&m.shape), KvCache::new(&m.shape));
    let mut rows: Vec<(usize, usize, Vec<f32>)> = Vec::new();
    // Beside another sequence that wants only its last row, as in a real step.
    m.forward_each(
        &mut [
            Chunk { tokens: &other, cache: &mut co, logits: Logits::Last },
            Chunk { tokens: &p, cache: &mut c, logits: Logits::All },
        ],
        |chunk, j, row| rows.push((chunk, j, row.to_vec())),
    )
    .unwrap();
    let order: Vec<(usize, usize)> = rows.iter().map(|r| (r.0, r.1)).collect();
    let want: Vec<(usize, usize)> = std::iter::once((0, other.len() - 1)).chain((0..p.len()).map(|j| (1, j))).collect();
    assert_eq!(order, want, "every row of the scored chunk, in order, after the other's last");
    for n in [1, 2, 7, p.len()] {
        let mut alone = KvCache::new(&m.shape);
        let l = m.forward(&mut [Chunk { tokens: &p[..n], cache: &mut alone, logits: Logits::Last }]).unwrap();
        let d = max_diff(l[0].as_ref().unwrap(), &rows[n].2);
        assert!(d < 1e-3, "prefix of {n}: {d}");
    }
}

/// The prompt's scores as the model gives them, position by position.
fn prompt_scores(tokens: &[u32], top: usize) -> Vec<sluice_llm::TokenLogprob> {
    let (m, _) = Llama::load(&model_dir().join("model.gguf")).unwrap();
    let mut c = KvCache::new(&m.shape);
    let mut out = Vec::new();
    m.forward_each(&mut [Chunk { tokens, cache: &mut c, logits: Logits::All }], |_, j, row| {
        if let Some(&next) = tokens.get(j + 1) {
            out.push(sluice_llm::logprob::score(row, next, top));
        }
    })
    .unwrap();
    out
}

#[tokio::test]
async fn the_engine_scores_prompts_fed_in_chunks_and_generated_tokens() {
    // A budget of 8 tokens a step: the prompt is fed, and scored, over several steps.
    let g = generator(GeneratorOptions { max_batched_tokens: 8, ..options() });
    let p = ids(PROMPT);
    let want = prompt_scores(&p, 2);
    assert_eq!(want.len(), p.len() - 1);

    // Scoring only: max_tokens 0.
    let mut rx = g.submit(p.clone(), SamplingParams { prompt_logprobs: Some(2), ..greedy(0) }).unwrap();
    let Some(Event::PromptLogprobs(got)) = rx.recv().await else { panic!("prompt scores first") };
    match rx.recv().await {
        Some(Event::Done(f)) => assert_eq!((f.reason, f.completion_tokens), (FinishReason::Length, 0)),
        other => panic!("then the end: {other:?}"),
    }
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!((a.token, a.top.len()), (p[i + 1], 2), "position {}", i + 1);
        assert!((a.logprob - b.logprob).abs() < 1e-3, "position {}: {} vs {}", i + 1, a.logprob, b.logprob);
        assert_eq!(a.top.iter().map(|t| t.0).collect::<Vec<_>>(), b.top.iter().map(|t| t.0).collect::<Vec<_>>());
    }

    // Generated tokens: each one's scores before its text; greedy picks the most likely.
    let mut rx = g.submit(p.clone(), SamplingParams { logprobs: Some(3), ..greedy(5) }).unwrap();
    let (mut scores, mut text, mut pending) = (Vec::new(), String::new(), false);
    loop {
        match rx.recv().await.unwrap() {
            Event::Logprobs(s) => {
                scores.push(s);
                pending = true;
            }
            Event::Text(t) => {
                assert!(pending, "a token's scores come before its text");
                pending = false;
                text.push_str(&t);
            }
            Event::Done(f) => {
                assert_eq!(f.completion_tokens, 5);
                break;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(text, "The capital of France is");
    assert_eq!(scores.len(), 5);
    for s in &scores {
        assert_eq!(s.top.len(), 3);
        assert_eq!((s.token, s.logprob), s.top[0], "greedy takes the most likely token");
        assert!(s.logprob <= 0.0);
    }
    // The first generated token is scored from the prompt's last position: what scoring the
    // prompt plus that token gives.
    let mut longer = p.clone();
    longer.push(scores[0].token);
    let last = prompt_scores(&longer, 0).pop().unwrap();
    assert!((last.logprob - scores[0].logprob).abs() < 1e-3);

    // Out-of-vocabulary ids are refused before anything runs.
    let e = g.submit(vec![1, 49152], greedy(1)).unwrap_err().to_string();
    assert!(e.contains("49152") && e.contains("vocabulary"), "{e}");
    assert!(g.submit(p, greedy(0)).unwrap_err().to_string().contains("max_tokens"));
}

fn generator(options: GeneratorOptions) -> Generator {
    let dir = model_dir();
    Generator::load("smollm", &dir.join("model.gguf"), &dir.join("tokenizer.json"), options).unwrap()
}

fn options() -> GeneratorOptions {
    GeneratorOptions { max_num_seqs: 4, max_batched_tokens: 256, kv_tokens: 4096, max_queue: 8 }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<Event>) -> (String, sluice_llm::Finish) {
    let mut text = String::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return (text, f),
            Event::Error(e) => panic!("error event: {e}"),
            Event::PromptLogprobs(_) | Event::Logprobs(_) => {}
        }
    }
    panic!("stream ended without Done")
}

#[tokio::test]
async fn generator_streams_answers_concurrently_stops_and_cancels() {
    let g = generator(options());
    let chat = |q: &str| {
        let p = g.chat_prompt(&[Message { role: "user".into(), content: q.into() }]).unwrap();
        g.encode_text(&p).unwrap()
    };
    // The GGUF's own template, with SmolLM's default system prompt, is used.
    assert!(g.chat_prompt(&[Message { role: "user".into(), content: "x".into() }]).unwrap().contains("SmolLM"));

    // Four at once: the same greedy answers as alone, each with its own end.
    let france = g.submit(ids(PROMPT), greedy(40)).unwrap();
    let germany = g.submit(chat("What is the capital of Germany?"), greedy(40)).unwrap();
    let short = g.submit(chat("Write a long story about a dragon."), greedy(5)).unwrap();
    let stopped = g.submit(ids(PROMPT), SamplingParams { stop: vec![" is".into()], ..greedy(40) }).unwrap();
    let (text, f) = collect(france).await;
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(f.reason, FinishReason::Stop);
    assert_eq!(collect(germany).await.0, "The capital of Germany is Berlin.");
    let (_, f) = collect(short).await;
    assert_eq!((f.reason, f.completion_tokens), (FinishReason::Length, 5));
    let (text, f) = collect(stopped).await;
    assert_eq!((text.as_str(), f.reason), ("The capital of France", FinishReason::Stop));

    // A stream dropped mid-way frees its slot.
    let mut rx =
        g.submit(chat("Count from one to a hundred."), SamplingParams { ignore_eos: true, ..greedy(400) }).unwrap();
    let _first = rx.recv().await.unwrap();
    assert_eq!(g.metrics().running.load(Relaxed), 1);
    drop(rx);
    let t0 = Instant::now();
    // Generous for a loaded CI machine: the slot is freed at the next step (milliseconds).
    while g.metrics().running.load(Relaxed) != 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the cancelled sequence kept its slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(g.metrics().ended[2].load(Relaxed), 1, "cancellation counted");
    // The other answers took well under 100 tokens; the cancelled one stopped long before 400.
    assert!(g.metrics().generated_tokens.load(Relaxed) < 300, "stopped generating");

    // Clear errors before anything is queued.
    let long = vec![1u32; 9000];
    assert!(g.submit(long, greedy(10)).unwrap_err().to_string().contains("context"));
    assert!(g.submit(vec![1], SamplingParams { top_p: 2.0, ..greedy(1) }).unwrap_err().to_string().contains("top_p"));
}

#[tokio::test]
async fn a_full_queue_is_refused() {
    let g = generator(GeneratorOptions { max_num_seqs: 1, max_queue: 1, ..options() });
    let p = g.encode_text("Once upon a time").unwrap();
    let params = SamplingParams { ignore_eos: true, ..greedy(200) };
    let mut first = g.submit(p.clone(), params.clone()).unwrap();
    first.recv().await.unwrap(); // running: the queue is empty again
    let _second = g.submit(p.clone(), params.clone()).unwrap(); // waits for the slot
    let err = g.submit(p, params).unwrap_err();
    assert!(matches!(err, sluice_types::ServeError::ResourceExhausted { .. }), "{err}");
}
