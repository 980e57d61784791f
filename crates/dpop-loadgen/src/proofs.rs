//! Proofs signed before a phase, each sent once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use dpop_core::{PrivateKey, ProofBuilder, SystemRandomSource};
use hyper::header::HeaderValue;

/// Pre-generated proofs, each handed out once.
#[derive(Debug)]
pub(crate) struct ProofPool {
    proofs: Vec<HeaderValue>,
    next: AtomicUsize,
    exhausted: AtomicBool,
}

impl ProofPool {
    pub(crate) fn new(proofs: Vec<HeaderValue>) -> Self {
        Self {
            proofs,
            next: AtomicUsize::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    pub(crate) fn take(&self) -> Option<HeaderValue> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let proof = self.proofs.get(i).cloned();
        if proof.is_none() {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        proof
    }

    pub(crate) fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// The proofs not handed out yet (after a phase, when nobody takes any more).
    pub(crate) fn into_unused(self) -> Vec<HeaderValue> {
        let used = self.next.into_inner().min(self.proofs.len());
        let mut proofs = self.proofs;
        proofs.drain(..used);
        proofs
    }
}

/// Signs `n` proofs on every core. `iat` is the time of signing.
fn generate_proofs(
    builder: &ProofBuilder,
    key: &PrivateKey,
    n: usize,
) -> anyhow::Result<Vec<HeaderValue>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = n.div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let count = per_thread.min(n.saturating_sub(t * per_thread));
                s.spawn(move || -> anyhow::Result<Vec<HeaderValue>> {
                    let mut out = Vec::with_capacity(count);
                    for _ in 0..count {
                        let proof = builder.sign(key, &SystemRandomSource, dpop_test::now())?;
                        out.push(HeaderValue::from_str(&proof)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            let part = w
                .join()
                .map_err(|_| anyhow::anyhow!("a proof generator thread panicked"))??;
            all.extend(part);
        }
        Ok(all)
    })
}

/// Generates `n` proofs off the async workers and reports the signing rate.
pub(crate) async fn generate(
    ctx: &Arc<(ProofBuilder, PrivateKey)>,
    n: usize,
) -> anyhow::Result<Vec<HeaderValue>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let ctx = Arc::clone(ctx);
    let started = Instant::now();
    let proofs = tokio::task::spawn_blocking(move || generate_proofs(&ctx.0, &ctx.1, n)).await??;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {n} proofs in {took:.2} s ({:.0}/s on all cores)",
        n as f64 / took.max(1e-6)
    );
    Ok(proofs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_proof_is_handed_out_once() {
        let proofs = ["a", "b", "c"].map(HeaderValue::from_static).to_vec();
        let pool = ProofPool::new(proofs);
        assert_eq!(pool.take(), Some(HeaderValue::from_static("a")));
        assert!(!pool.is_exhausted());
        let unused = ProofPool::new(vec![HeaderValue::from_static("x")]);
        assert_eq!(
            unused.take().as_ref().map(HeaderValue::as_bytes),
            Some(&b"x"[..])
        );
        assert_eq!(unused.take(), None);
        assert!(unused.is_exhausted());
        assert!(unused.into_unused().is_empty());
        assert_eq!(pool.into_unused(), ["b", "c"].map(HeaderValue::from_static));
    }
}
