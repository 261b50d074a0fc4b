//! The generative model on the real SmolLM2-135M-Instruct GGUF of $SLUICE_MODELS: the same
//! logits as candle's own quantized llama, the same logits whether a sequence runs alone or
//! batched with others, and the generator's streams (greedy answer, stop, length, cancel).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use sluice_llm::model::{Chunk, KvCache, Llama};
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
        let ours_logits =
            ours.forward(&mut [Chunk { tokens: &feed, cache: &mut cache, logits: true }]).unwrap().remove(0).unwrap();
        let x = Tensor::new(feed.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs_logits: Vec<f32> = theirs.forward(&x, pos).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        // Not bit-identical: attention sums in another order (differences of ~1e-7), and the
        // next layer's int8 activation quantization turns a rounding flip into a visible step,
        // so logits (spread over ~40) differ by up to ~0.5. Candle's own attention on our
        // cache gives its logits exactly (checked while writing this).
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
        m.forward(&mut [Chunk { tokens: p, cache: &mut c, logits: true }]).unwrap().remove(0).unwrap()
    };
    let (la, lb) = (alone(&a), alone(&b));
    // Together, and `a` fed in two chunks, the first without logits.
    let (mut ca, mut cb) = (KvCache::new(&m.shape), KvCache::new(&m.shape));
    let out = m
        .forward(&mut [
            Chunk { tokens: &a[..5], cache: &mut ca, logits: false },
            Chunk { tokens: &b, cache: &mut cb, logits: true },
        ])
        .unwrap();
    assert!(out[0].is_none());
    let lb2 = out[1].clone().unwrap();
    let out = m.forward(&mut [Chunk { tokens: &a[5..], cache: &mut ca, logits: true }]).unwrap();
    let la2 = out[0].clone().unwrap();
    // int8 activations are quantized per row, so stacking rows changes nothing.
    assert!(max_diff(&la, &la2) < 1e-3, "a: {}", max_diff(&la, &la2));
    assert!(max_diff(&lb, &lb2) < 1e-3, "b: {}", max_diff(&lb, &lb2));
    // And one decoding step of both together.
    let (na, nb) = (argmax(&la), argmax(&lb));
    let step = m
        .forward(&mut [
            Chunk { tokens: &[na], cache: &mut ca, logits: true },
            Chunk { tokens: &[nb], cache: &mut cb, logits: true },
        ])
        .unwrap();
    let mut a1 = a.clone();
    a1.push(na);
    assert!(max_diff(&alone(&a1), step[0].as_ref().unwrap()) < 1e-3);
    assert_eq!(ca.len(), a.len() + 1);
    assert_eq!(cb.len(), b.len() + 1);
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
