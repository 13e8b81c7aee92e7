//! Faults injected into a real backend, on demand: what the soak bench uses to show that a
//! fault stays with the requests it hits while the server goes on.

use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId, StepFailure};
use crate::error::BoxError;

use super::TestError;

/// A fault for the next step of a [`Faulty`] backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step fails and the backend cannot say what it cost: the step's requests fail.
    Step,
    /// The step fails costing only its first sequence's KV cache, and the backend says so: the
    /// engine computes that sequence again and no request fails.
    OneSequence,
    /// The step panics.
    Panic,
}

/// Arms a [`Faulty`] backend; cloneable, to be kept by whoever injects.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<Mutex<Option<Fault>>>);

impl FaultSwitch {
    /// The next step that carries a batch suffers `fault`.
    pub fn arm(&self, fault: Fault) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    fn take(&self) -> Option<Fault> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A backend that runs `inner` and suffers the faults its [`FaultSwitch`] arms.
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    switch: FaultSwitch,
    failed: Option<StepFailure>,
}

impl<B> Faulty<B> {
    /// `inner`, with faults from `switch`.
    pub fn new(inner: B, switch: FaultSwitch) -> Self {
        Self {
            inner,
            switch,
            failed: None,
        }
    }
}

impl<B: Backend> Backend for Faulty<B> {
    type Error = BoxError;

    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn forward(&mut self, batch: &[BatchEntry<'_>], logits: &mut Logits) -> Result<(), BoxError> {
        match self.switch.take() {
            None => self.inner.forward(batch, logits).map_err(Into::into),
            Some(Fault::Step) => Err(TestError("injected fault: a failed step".into()).into()),
            Some(Fault::OneSequence) => {
                let seq = batch.first().map(|e| e.seq);
                if let Some(seq) = seq {
                    self.inner.release(seq);
                }
                self.failed = Some(StepFailure::Lost(seq.into_iter().collect()));
                Err(TestError("injected fault: one sequence's step failed".into()).into())
            }
            Some(Fault::Panic) => panic!("injected fault: a backend panic"),
        }
    }

    fn failure(&mut self, _: &BoxError) -> StepFailure {
        self.failed.take().unwrap_or(StepFailure::Batch)
    }

    fn release(&mut self, seq: SeqId) {
        self.inner.release(seq);
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), BoxError> {
        self.inner.truncate(seq, len).map_err(Into::into)
    }

    fn reuse_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> u32 {
        self.inner.reuse_prefix(seq, tokens)
    }
}
