//! How one decoding step's time grows with the number of sequences in it (the gain continuous
//! batching can get on this machine): `cargo run --release -p sluice-llm --example step_cost`.

use std::time::Instant;

use sluice_llm::model::{Chunk, KvCache, Llama, Logits};

fn main() {
    let dir = sluice_test_models::model_path("smollm2-135m-instruct");
    let (m, _) = Llama::load(&dir.join("model.gguf")).unwrap();
    let prompt: Vec<u32> = (100..140).collect();
    for b in std::env::args().skip(1).map(|a| a.parse::<usize>().unwrap()).collect::<Vec<_>>() {
        let mut caches: Vec<KvCache> = (0..b).map(|_| KvCache::new(&m.shape)).collect();
        for c in caches.iter_mut() {
            m.forward(&mut [Chunk { tokens: &prompt, cache: c, logits: Logits::Last }]).unwrap();
        }
        let steps = 20;
        let t0 = Instant::now();
        for _ in 0..steps {
            let tok = [7u32];
            let mut chunks: Vec<Chunk> =
                caches.iter_mut().map(|c| Chunk { tokens: &tok, cache: c, logits: Logits::Last }).collect();
            m.forward(&mut chunks).unwrap();
        }
        let per = t0.elapsed().as_secs_f64() / steps as f64;
        println!("batch {b:2}: {:6.1} ms per step, {:6.1} tokens/s", per * 1e3, b as f64 / per);
    }
}
