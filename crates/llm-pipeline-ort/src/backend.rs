//! [`Backend`] over one ONNX Runtime session of a decoder-with-past export.
//!
//! Each engine step becomes a few graph runs: the decode rows (one new token each) apart from
//! the prefill rows (several tokens each), so that a long prompt chunk never pads every decoding
//! sequence to its length. Each run is one padded call: rows are stacked, the attention mask
//! marks each row's real columns and `position_ids` its positions, and only the logits rows the
//! engine asked for are copied out. Where each sequence's KV lives between steps, and when it is
//! copied, is the business of [`crate::kv`].
//!
//! Padding costs memory: a run holds `rows × (longest past + new tokens)` cells twice (the past
//! it is given and the present it returns), so one long sequence beside a hundred short ones
//! would pad every short one to its length. A run of several rows is therefore kept within half
//! the KV capacity ([`OrtBackend::run_cells`]): rows are sorted by length and cut into runs that
//! fit, the long ones running apart. With the compact caches (at most the capacity, which the
//! engine enforces) that keeps a step's KV within `CPU_KV_CACHE_SPACE`. A single row always
//! runs, without a copy: its own tensors are its past.

use std::collections::HashMap;
use std::time::Instant;

use llm_pipeline_core::backend::{Backend, BackendInfo, BatchEntry, Logits, SeqId, StepFailure};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use crate::OrtError;
use crate::kv::{self, KvCopyMeter, KvElem, KvShape, Place, Resident, Source, ZeroCopy};
use crate::layout::{Dtype, Interface};

/// One sequence's KV: how many tokens, and where they are.
#[derive(Debug)]
struct SeqKv {
    len: usize,
    place: Place,
}

/// Where a graph run's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Decode rows (one token each); the output becomes the resident batch.
    Resident,
    /// Prompt chunks, and decode rows that run apart from the resident batch (long ones, see
    /// the module's docs); the output is compacted into each sequence's own tensors.
    Own,
}

/// The ONNX Runtime backend.
pub struct OrtBackend {
    session: Session,
    iface: Interface,
    shape: KvShape,
    past_names: Vec<String>,
    present_names: Vec<String>,
    seqs: HashMap<SeqId, SeqKv>,
    resident: Resident,
    /// The sequences the last failed step cost their caches.
    lost: Vec<SeqId>,
    meter: KvCopyMeter,
    info: BackendInfo,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend")
            .field("info", &self.info)
            .field("interface", &self.iface)
            .field("sequences", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

/// The inputs of one graph run, before the past.
struct Feed {
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: Vec<i64>,
    rows: usize,
    new_cols: usize,
    /// `logits_index`, for a graph that takes it: per row, the new columns whose logits the
    /// engine wants, padded to `pick_cols` by repeating the last.
    picks: Vec<i64>,
    pick_cols: usize,
}

impl OrtBackend {
    /// A backend over a loaded session whose interface was checked.
    pub(crate) fn new(
        session: Session,
        iface: Interface,
        info: BackendInfo,
        meter: KvCopyMeter,
    ) -> Self {
        let names = |prefix: &str| {
            (0..iface.layers)
                .flat_map(|i| ["key", "value"].map(|k| format!("{prefix}.{i}.{k}")))
                .collect::<Vec<_>>()
        };
        Self {
            past_names: names("past_key_values"),
            present_names: names("present"),
            shape: KvShape {
                tensors: 2 * iface.layers,
                kv_heads: iface.kv_heads,
                head_dim: iface.head_dim,
            },
            session,
            iface,
            seqs: HashMap::new(),
            resident: Resident::default(),
            lost: Vec::new(),
            meter,
            info,
        }
    }

    /// The counters of KV copies.
    pub fn meter(&self) -> &KvCopyMeter {
        &self.meter
    }

    /// The most padded KV cells (`rows × columns`) a graph run of several rows may hold: half
    /// of [`BackendInfo::kv_capacity`], so that its past and its present together stay within
    /// the capacity beside the compact caches.
    pub fn run_cells(&self) -> usize {
        (self.info.kv_capacity / 2) as usize
    }

    /// Cuts the rows of one kind (`members`, indices into `batch`) into graph runs within
    /// [`run_cells`](Self::run_cells). Decode rows that the resident batch carries as it is
    /// stay one run; otherwise rows are sorted by past length and cut where the padded size
    /// would pass the limit, and of decode runs, the one with the most rows becomes the new
    /// resident batch while the others keep their own tensors.
    fn plan(
        &self,
        batch: &[BatchEntry<'_>],
        members: &[usize],
        decode: bool,
    ) -> Vec<(Group, Vec<usize>)> {
        if decode && self.resident_order(batch, members).is_some() {
            return vec![(Group::Resident, members.to_vec())];
        }
        let past = |i: usize| self.seqs.get(&batch[i].seq).map_or(0, |s| s.len);
        let mut sorted = members.to_vec();
        sorted.sort_by_key(|&i| (past(i), batch[i].tokens.len()));
        let mut runs: Vec<Vec<usize>> = Vec::new();
        let mut widest = (0, 0);
        for i in sorted {
            let wider = (widest.0.max(past(i)), widest.1.max(batch[i].tokens.len()));
            match runs.last_mut() {
                Some(run) if (run.len() + 1) * (wider.0 + wider.1) <= self.run_cells() => {
                    run.push(i);
                    widest = wider;
                }
                _ => {
                    runs.push(vec![i]);
                    widest = (past(i), batch[i].tokens.len());
                }
            }
        }
        let resident = runs
            .iter()
            .enumerate()
            .max_by_key(|(_, run)| run.len())
            .map(|(r, _)| r)
            .filter(|_| decode);
        runs.into_iter()
            .enumerate()
            .map(|(r, run)| {
                let group = if Some(r) == resident {
                    Group::Resident
                } else {
                    Group::Own
                };
                (group, run)
            })
            .collect()
    }

    /// Moves resident row `r` into its sequence's own tensors.
    fn evict<T: KvElem>(&mut self, r: usize) -> Result<(), OrtError> {
        let Some(seq) = self.resident.rows[r].take() else {
            return Ok(());
        };
        let src = Source {
            values: &self.resident.values,
            row: r,
            cols: self.resident.cols,
            runs: self.resident.runs(r),
        };
        let own = kv::compact::<T>(self.shape, &src, &self.meter)?;
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.place = Place::Own(own);
        }
        Ok(())
    }

    /// The batch entry of each resident row (`None` for released rows), when the decode group
    /// `rows` can run on the resident batch as it is: the group is exactly the live resident
    /// rows, each continuing where it stopped; released rows, kept as dead padding so that a
    /// finished sequence costs no copy, are no more than the live ones; and the grown batch
    /// stays within [`run_cells`](Self::run_cells) (or is one row).
    fn resident_order(
        &self,
        batch: &[BatchEntry<'_>],
        rows: &[usize],
    ) -> Option<Vec<Option<usize>>> {
        let live = self.resident.rows.iter().flatten().count();
        if self.resident.values.is_empty()
            || live != rows.len()
            || self.resident.rows.len() > 2 * live
            || (self.resident.rows.len() > 1
                && self.resident.rows.len() * (self.resident.cols + 1) > self.run_cells())
        {
            return None;
        }
        let mut order = vec![None; self.resident.rows.len()];
        for &i in rows {
            let s = self.seqs.get(&batch[i].seq)?;
            match s.place {
                Place::Resident(r) if s.len == batch[i].start as usize => order[r] = Some(i),
                _ => return None,
            }
        }
        Some(order)
    }

    /// Runs one graph call over the batch entries at `rows` (indices into `batch`), storing the
    /// logits rows asked for in `out` at the entries' indices.
    fn run_group<T: KvElem>(
        &mut self,
        batch: &[BatchEntry<'_>],
        rows: &[usize],
        group: Group,
        out: &mut [Option<Vec<f32>>],
    ) -> Result<(), OrtError> {
        let fast = match group {
            Group::Resident => self.resident_order(batch, rows),
            Group::Own => None,
        };
        let (order, past, feed, zero_copy) = match fast {
            Some(order) => {
                // Dead rows get a placeholder token whose column is masked out.
                let old = self.resident.cols;
                let mut mask = Vec::with_capacity(order.len() * (old + 1));
                for (r, o) in order.iter().enumerate() {
                    mask.extend_from_slice(&self.resident.mask[r * old..(r + 1) * old]);
                    mask.push(i64::from(o.is_some()));
                }
                let feed = Feed {
                    ids: order
                        .iter()
                        .map(|o| o.map_or(0, |i| i64::from(batch[i].tokens[0])))
                        .collect(),
                    positions: order
                        .iter()
                        .map(|o| o.map_or(0, |i| i64::from(batch[i].start)))
                        .collect(),
                    mask,
                    rows: order.len(),
                    new_cols: 1,
                    picks: vec![0; order.len()],
                    pick_cols: 1,
                };
                let past = std::mem::take(&mut self.resident.values);
                (order, past, feed, ZeroCopy::Yes)
            }
            None => {
                let (past, feed, zero_copy) = self.gather_rows::<T>(batch, rows, group)?;
                (
                    rows.iter().map(|&i| Some(i)).collect(),
                    past,
                    feed,
                    zero_copy,
                )
            }
        };
        let outputs = self.run(past, &feed, zero_copy)?;
        self.logits_rows(&outputs, batch, &order, &feed, out)?;
        let mut presents = outputs.presents;
        for &i in order.iter().flatten() {
            if let Some(s) = self.seqs.get_mut(&batch[i].seq) {
                s.len += batch[i].tokens.len();
            }
        }
        match group {
            Group::Resident => {
                for (r, &i) in order.iter().enumerate() {
                    if let Some(s) = i.and_then(|i| self.seqs.get_mut(&batch[i].seq)) {
                        s.place = Place::Resident(r);
                    }
                }
                let cols = feed.mask_cols();
                self.resident = Resident {
                    rows: order.iter().map(|o| o.map(|i| batch[i].seq)).collect(),
                    values: presents,
                    mask: feed.mask,
                    cols,
                };
            }
            // An `Own` run always gathers, so its rows are `rows`, in order.
            Group::Own if feed.mask.iter().all(|&m| m == 1) && rows.len() == 1 => {
                if let Some(s) = self.seqs.get_mut(&batch[rows[0]].seq) {
                    s.place = Place::Own(std::mem::take(&mut presents));
                }
            }
            Group::Own => {
                let cols = feed.mask_cols();
                for (r, &i) in rows.iter().enumerate() {
                    let src = Source {
                        values: &presents,
                        row: r,
                        cols,
                        runs: kv::runs(&feed.mask[r * cols..(r + 1) * cols]),
                    };
                    let own = kv::compact::<T>(self.shape, &src, &self.meter)?;
                    if let Some(s) = self.seqs.get_mut(&batch[i].seq) {
                        s.place = Place::Own(own);
                    }
                }
            }
        }
        Ok(())
    }

    /// Builds the padded past of `rows` from wherever each lives, and the feed. For a resident
    /// run, the resident batch is replaced: its rows outside the run are evicted first.
    fn gather_rows<T: KvElem>(
        &mut self,
        batch: &[BatchEntry<'_>],
        rows: &[usize],
        group: Group,
    ) -> Result<(Vec<DynValue>, Feed, ZeroCopy), OrtError> {
        if group == Group::Own {
            // A resident sequence in an `Own` run (a rare prefill, or a decode row grown too
            // long for the resident batch) leaves the resident batch first.
            for &i in rows {
                if let Some(SeqKv {
                    place: Place::Resident(r),
                    ..
                }) = self.seqs.get(&batch[i].seq)
                {
                    let r = *r;
                    self.evict::<T>(r)?;
                }
            }
        }
        let mut lens = Vec::with_capacity(rows.len());
        for &i in rows {
            let e = &batch[i];
            let s = self.seqs.entry(e.seq).or_insert(SeqKv {
                len: 0,
                place: Place::Own(Vec::new()),
            });
            if s.len != e.start as usize {
                return Err(OrtError::Position {
                    seq: e.seq,
                    cached: s.len,
                    start: e.start,
                });
            }
            lens.push(s.len);
        }
        let past_len = lens.iter().copied().max().unwrap_or(0);
        let new_cols = rows
            .iter()
            .map(|&i| batch[i].tokens.len())
            .max()
            .unwrap_or(1);
        let feed = Feed::new(batch, rows, &lens, past_len, new_cols);
        let single_own = rows.len() == 1 && lens[0] == past_len;
        let (past, zero_copy) = if past_len == 0 {
            (kv::empty::<T>(self.shape, rows.len())?, ZeroCopy::No)
        } else if single_own
            && let Some(SeqKv {
                place: Place::Own(values),
                ..
            }) = self.seqs.get_mut(&batch[rows[0]].seq)
        {
            (std::mem::take(values), ZeroCopy::Yes)
        } else {
            let mut sources = Vec::with_capacity(rows.len());
            for &i in rows {
                let s = &self.seqs[&batch[i].seq];
                sources.push(match &s.place {
                    Place::Own(values) => Source {
                        values,
                        row: 0,
                        cols: s.len,
                        runs: std::iter::once(0..s.len).collect(),
                    },
                    Place::Resident(r) => Source {
                        values: &self.resident.values,
                        row: *r,
                        cols: self.resident.cols,
                        runs: self.resident.runs(*r),
                    },
                });
            }
            (
                kv::gather::<T>(self.shape, &sources, past_len, &self.meter)?,
                ZeroCopy::No,
            )
        };
        if group == Group::Resident {
            let members: Vec<SeqId> = rows.iter().map(|&i| batch[i].seq).collect();
            for r in 0..self.resident.rows.len() {
                if self.resident.rows[r].is_some_and(|s| !members.contains(&s)) {
                    self.evict::<T>(r)?;
                }
            }
            self.resident = Resident::default();
        }
        Ok((past, feed, zero_copy))
    }

    /// Runs the session.
    fn run(
        &mut self,
        past: Vec<DynValue>,
        feed: &Feed,
        zero_copy: ZeroCopy,
    ) -> Result<Outputs, OrtError> {
        let err = |source| OrtError::Run { source };
        let shape = [feed.rows, feed.new_cols];
        let mut inputs: Vec<(String, DynValue)> = Vec::with_capacity(3 + past.len());
        let tensor = |data: Vec<i64>, shape: [usize; 2]| {
            Tensor::from_array((shape, data))
                .map(Tensor::into_dyn)
                .map_err(err)
        };
        inputs.push(("input_ids".into(), tensor(feed.ids.clone(), shape)?));
        inputs.push((
            "attention_mask".into(),
            tensor(feed.mask.clone(), [feed.rows, feed.mask_cols()])?,
        ));
        if self.iface.has_position_ids {
            inputs.push((
                "position_ids".into(),
                tensor(feed.positions.clone(), shape)?,
            ));
        }
        if self.iface.has_logits_index {
            inputs.push((
                "logits_index".into(),
                tensor(feed.picks.clone(), [feed.rows, feed.pick_cols])?,
            ));
        }
        inputs.extend(self.past_names.iter().cloned().zip(past));
        let started = Instant::now();
        let mut outputs = self.session.run(inputs).map_err(err)?;
        self.meter.call(zero_copy, started, feed.mask.len());
        let logits = outputs
            .remove("logits")
            .ok_or(OrtError::MissingOutput { name: "logits" })?;
        let presents = self
            .present_names
            .iter()
            .map(|n| {
                outputs
                    .remove(n)
                    .ok_or(OrtError::MissingOutput { name: "present" })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Outputs { logits, presents })
    }

    /// Cuts `seq`'s KV to its first `len` tokens, into its own tensors (a resident row leaves
    /// the resident batch).
    fn cut<T: KvElem>(&mut self, seq: SeqId, len: usize) -> Result<(), OrtError> {
        let Some(s) = self.seqs.get(&seq) else {
            return Ok(());
        };
        if s.len <= len {
            return Ok(());
        }
        let (values, row, cols, runs) = match &s.place {
            Place::Own(values) => (
                values.as_slice(),
                0,
                s.len,
                std::iter::once(0..s.len).collect(),
            ),
            Place::Resident(r) => (
                self.resident.values.as_slice(),
                *r,
                self.resident.cols,
                self.resident.runs(*r),
            ),
        };
        let src = Source {
            values,
            row,
            cols,
            runs: kv::first_cells(runs, len),
        };
        let own = if len == 0 {
            Vec::new()
        } else {
            kv::compact::<T>(self.shape, &src, &self.meter)?
        };
        let Some(s) = self.seqs.get_mut(&seq) else {
            return Ok(());
        };
        if let Place::Resident(r) = s.place {
            self.resident.rows[r] = None;
            if self.resident.rows.iter().all(Option::is_none) {
                self.resident = Resident::default();
            }
        }
        s.place = Place::Own(own);
        s.len = len;
        Ok(())
    }

    /// Copies the logits rows the engine wants: those of the last `logits` real columns of
    /// each row.
    fn logits_rows(
        &self,
        outputs: &Outputs,
        batch: &[BatchEntry<'_>],
        order: &[Option<usize>],
        feed: &Feed,
        out: &mut [Option<Vec<f32>>],
    ) -> Result<(), OrtError> {
        let vocab = self.iface.vocab_size;
        let err = |source| OrtError::Run { source };
        for (r, i) in order.iter().enumerate() {
            let Some(i) = *i else { continue };
            let e = &batch[i];
            if e.logits == 0 {
                continue;
            }
            // Without `logits_index` the graph gave every column's; with it, the picked ones.
            let at = if self.iface.has_logits_index {
                r * feed.pick_cols * vocab
            } else {
                (r * feed.new_cols + e.first_logits()) * vocab
            };
            let end = at + e.logits as usize * vocab;
            out[i] = Some(match self.iface.logits_dtype {
                Dtype::F16 => {
                    let (_, data) = outputs
                        .logits
                        .try_extract_tensor::<half::f16>()
                        .map_err(err)?;
                    data[at..end].iter().map(|x| x.to_f32()).collect()
                }
                _ => {
                    let (_, data) = outputs.logits.try_extract_tensor::<f32>().map_err(err)?;
                    data[at..end].to_vec()
                }
            });
        }
        Ok(())
    }
}

/// What one run returns.
struct Outputs {
    logits: DynValue,
    presents: Vec<DynValue>,
}

impl Feed {
    /// Token ids, mask and positions for `rows` with pasts of `lens`, padded to `past_len`
    /// past columns and `new_cols` new ones.
    fn new(
        batch: &[BatchEntry<'_>],
        rows: &[usize],
        lens: &[usize],
        past_len: usize,
        new_cols: usize,
    ) -> Self {
        let n = rows.len();
        let pick_cols = rows
            .iter()
            .map(|&i| batch[i].logits as usize)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut picks = Vec::with_capacity(n * pick_cols);
        let mut ids = Vec::with_capacity(n * new_cols);
        let mut positions = Vec::with_capacity(n * new_cols);
        let mut mask = Vec::with_capacity(n * (past_len + new_cols));
        for (&i, &len) in rows.iter().zip(lens) {
            let e = &batch[i];
            let last = e.tokens.len() - 1;
            for c in 0..new_cols {
                ids.push(e.tokens.get(c).map_or(0, |&t| i64::from(t)));
                positions.push(i64::from(e.start) + c.min(last) as i64);
            }
            mask.extend((0..past_len).map(|c| i64::from(c < len)));
            mask.extend((0..new_cols).map(|c| i64::from(c < e.tokens.len())));
            let first = e.first_logits();
            picks.extend((0..pick_cols).map(|c| (first + c).min(last) as i64));
        }
        Self {
            ids,
            mask,
            positions,
            rows: n,
            new_cols,
            picks,
            pick_cols,
        }
    }

    fn mask_cols(&self) -> usize {
        self.mask.len() / self.rows.max(1)
    }
}

impl Backend for OrtBackend {
    type Error = OrtError;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn forward(&mut self, batch: &[BatchEntry<'_>], logits: &mut Logits) -> Result<(), OrtError> {
        let step = self.meter.begin_step();
        let (decode, prefill): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| batch[i].tokens.len() == 1);
        let mut rows = vec![None; batch.len()];
        let mut runs = self.plan(batch, &prefill, false);
        runs.extend(self.plan(batch, &decode, true));
        for (k, (group, members)) in runs.iter().enumerate() {
            let ran = match self.iface.kv_dtype {
                Dtype::F16 => self.run_group::<half::f16>(batch, members, *group, &mut rows),
                _ => self.run_group::<f32>(batch, members, *group, &mut rows),
            };
            if let Err(e) = ran {
                // The failed run's inputs may have been consumed, and the runs before it moved
                // their sequences past what the engine knows: all of those lose their caches,
                // and if the failed run took the resident batch, so does every row of it.
                // Every other sequence keeps its cache; `failure` names the lost ones, which
                // the engine computes again.
                let mut lost: Vec<SeqId> = runs[..=k]
                    .iter()
                    .flat_map(|(_, members)| members.iter().map(|&i| batch[i].seq))
                    .collect();
                if self.resident.values.is_empty() {
                    lost.extend(
                        self.seqs
                            .iter()
                            .filter(|(_, s)| matches!(s.place, Place::Resident(_)))
                            .map(|(&seq, _)| seq),
                    );
                    self.resident = Resident::default();
                }
                lost.sort_unstable();
                lost.dedup();
                for &seq in &lost {
                    self.seqs.remove(&seq);
                }
                self.lost = lost;
                return Err(e);
            }
        }
        for group in rows.into_iter().flatten() {
            for row in group.chunks_exact(self.iface.vocab_size) {
                logits.push_row(row);
            }
        }
        self.meter.end_step(step);
        Ok(())
    }

    fn truncate(&mut self, seq: SeqId, len: u32) -> Result<(), OrtError> {
        match self.iface.kv_dtype {
            Dtype::F16 => self.cut::<half::f16>(seq, len as usize),
            _ => self.cut::<f32>(seq, len as usize),
        }
    }

    fn failure(&mut self, _: &OrtError) -> StepFailure {
        StepFailure::Lost(std::mem::take(&mut self.lost))
    }

    fn release(&mut self, seq: SeqId) {
        if let Some(SeqKv {
            place: Place::Resident(r),
            ..
        }) = self.seqs.remove(&seq)
        {
            self.resident.rows[r] = None;
            if self.resident.rows.iter().all(Option::is_none) {
                self.resident = Resident::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_pads_rows_and_marks_their_real_columns() {
        let (a, b) = ([7u32, 8], [9u32]);
        let batch = [
            BatchEntry {
                seq: 1,
                start: 3,
                tokens: &a,
                logits: 1,
            },
            BatchEntry {
                seq: 2,
                start: 1,
                tokens: &b,
                logits: 1,
            },
        ];
        // Pasts of 3 and 1 tokens, padded to 3 past columns and 2 new ones.
        let feed = Feed::new(&batch, &[0, 1], &[3, 1], 3, 2);
        assert_eq!(feed.ids, [7, 8, 9, 0]);
        assert_eq!(feed.positions, [3, 4, 1, 1]);
        assert_eq!(feed.mask, [1, 1, 1, 1, 1, 1, 0, 0, 1, 0]);
        assert_eq!(feed.mask_cols(), 5);
        // The last column of each row's new tokens gives its logits.
        assert_eq!((feed.picks.as_slice(), feed.pick_cols), (&[1, 0][..], 1));
        // A row verifying a draft wants its last two; the other repeats its one.
        let batch = [
            BatchEntry {
                logits: 2,
                ..batch[0]
            },
            batch[1],
        ];
        let feed = Feed::new(&batch, &[0, 1], &[3, 1], 3, 2);
        assert_eq!(
            (feed.picks.as_slice(), feed.pick_cols),
            (&[0, 1, 0, 0][..], 2)
        );
    }
}
