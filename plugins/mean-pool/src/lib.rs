//! `mean-pool`: turns per-token embeddings into one sentence embedding per
//! batch row, averaging only the tokens the attention mask keeps, then
//! (by default) scaling it to unit length, as sentence-transformers does.
//!
//! Inputs: `token_embeddings` f32 [batch, sequence, hidden], `attention_mask`
//! i64 [batch, sequence]. Output: `sentence_embedding` f32 [batch, hidden].
//! Config: `normalize` (bool, default true).

use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};

struct MeanPool {
    normalize: bool,
}

impl Stage for MeanPool {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&["normalize"])?;
        Ok(MeanPool {
            normalize: config.get_or("normalize", true)?,
        })
    }

    fn describe(&self) -> StageInfo {
        let (b, s, h) = (Dim::sym("batch"), Dim::sym("sequence"), Dim::sym("hidden"));
        StageInfo::new(
            "mean-pool",
            env!("CARGO_PKG_VERSION"),
            "masked mean pooling and L2 normalisation",
        )
        .input(TensorSpec::new("token_embeddings", ElementType::F32).dims([
            b.clone(),
            s.clone(),
            h.clone(),
        ]))
        .input(TensorSpec::new("attention_mask", ElementType::I64).dims([b.clone(), s]))
        .output(TensorSpec::new("sentence_embedding", ElementType::F32).dims([b, h]))
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let embeddings = inputs.take("token_embeddings")?;
        let mask = inputs.take("attention_mask")?;
        let shape = embeddings.expect_rank(3)?;
        let (batch, seq, hidden) = (shape[0], shape[1], shape[2]);
        mask.expect_dims(&embeddings.dims[..2]).map_err(|_| {
            StageError::invalid_input(format!(
                "attention_mask has shape {:?} but token_embeddings is {:?}: both must be [batch, sequence]",
                mask.dims, embeddings.dims
            ))
        })?;
        let values = embeddings.to_f32()?;
        let mask = mask.to_i64()?;

        let mut pooled = vec![0f32; batch * hidden];
        for b in 0..batch {
            let out = &mut pooled[b * hidden..(b + 1) * hidden];
            let mut kept = 0f32;
            for s in 0..seq {
                if mask[b * seq + s] == 0 {
                    continue;
                }
                kept += 1.0;
                let token = &values[(b * seq + s) * hidden..(b * seq + s + 1) * hidden];
                out.iter_mut().zip(token).for_each(|(o, v)| *o += v);
            }
            // sentence-transformers clamps the count at 1e-9, so an all-masked
            // row pools to zeros rather than NaN.
            let kept = kept.max(1e-9);
            out.iter_mut().for_each(|o| *o /= kept);
            if self.normalize {
                let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                out.iter_mut().for_each(|o| *o /= norm);
            }
        }
        Ok(vec![Tensor::from_f32(
            "sentence_embedding",
            vec![batch as u32, hidden as u32],
            &pooled,
        )?])
    }
}

outpost_guest::export_stage!(MeanPool);
