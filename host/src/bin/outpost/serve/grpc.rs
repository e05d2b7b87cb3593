//! KServe v2 over gRPC: `inference.GRPCInferenceService`, generated from
//! the vendored `host/proto/grpc_predict_v2.proto`.

use super::error::ApiError;
use super::kserve::{self, WireData, WireInput, WireOutput};
use super::models::{App, Served};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_response::InferOutputTensor;
use pb::model_metadata_response::TensorMetadata;

pub struct GrpcApi {
    app: Arc<App>,
}

/// The service, behind a check of the bearer token (`authorization`
/// metadata) when one is configured.
pub fn service(
    app: Arc<App>,
    max_message_bytes: usize,
) -> tonic::service::interceptor::InterceptedService<
    GrpcInferenceServiceServer<GrpcApi>,
    impl tonic::service::Interceptor + Clone,
> {
    let guard = app.clone();
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(tonic::metadata::MetadataValue::as_bytes);
        guard.authorize(header).map_err(Status::from)?;
        Ok(request)
    };
    let server = GrpcInferenceServiceServer::new(GrpcApi { app })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    tonic::service::interceptor::InterceptedService::new(server, check)
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn raw_contents(datatype: &str, contents: pb::InferTensorContents) -> Result<WireData, ApiError> {
    let mut raw = Vec::new();
    match datatype {
        "BYTES" => return Ok(WireData::Elements(contents.bytes_contents)),
        "FP32" => contents
            .fp32_contents
            .iter()
            .for_each(|v| raw.extend(v.to_le_bytes())),
        "FP64" => contents
            .fp64_contents
            .iter()
            .for_each(|v| raw.extend(v.to_le_bytes())),
        "INT64" => contents
            .int64_contents
            .iter()
            .for_each(|v| raw.extend(v.to_le_bytes())),
        "INT32" => contents
            .int_contents
            .iter()
            .for_each(|v| raw.extend(v.to_le_bytes())),
        "UINT8" => {
            for v in &contents.uint_contents {
                raw.push(u8::try_from(*v).map_err(|_| {
                    ApiError::bad_request(format!("UINT8 contents hold {v}, past 255"))
                })?);
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "{other} data cannot come as typed contents; send raw_input_contents"
            )));
        }
    }
    Ok(WireData::Raw(raw))
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcApi {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.app.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        self.app.model(&r.name, Some(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.app.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "outpost".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let served = self.app.model(&r.name, Some(&r.version))?;
        let list = |tensors: &[(String, Option<outpost_host::TensorSpec>)]| {
            tensors
                .iter()
                .map(|(name, spec)| {
                    let (name, datatype, shape) = kserve::tensor_metadata(name, spec.as_ref());
                    TensorMetadata {
                        name,
                        datatype,
                        shape,
                    }
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: served.name.clone(),
            versions: vec![served.version.clone()],
            platform: "outpost".into(),
            inputs: list(&served.inputs),
            outputs: list(&served.outputs),
            properties: Default::default(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let served = {
            let r = request.get_ref();
            self.app.model(&r.model_name, Some(&r.model_version))?
        };
        let result = self.infer_model(&served, request).await;
        served.count(&self.app.metrics, &result);
        result.map(Response::new).map_err(Status::from)
    }
}

impl GrpcApi {
    async fn infer_model(
        &self,
        served: &Served,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<pb::ModelInferResponse, ApiError> {
        let entry = served.enter()?;
        let mut asked = grpc_timeout(request.metadata());
        let r = request.into_inner();
        if let Some(p) = r.parameters.get("timeout") {
            let micros = match p.parameter_choice {
                Some(ParameterChoice::Int64Param(n)) => u64::try_from(n).ok(),
                Some(ParameterChoice::Uint64Param(n)) => Some(n),
                _ => None,
            }
            .ok_or_else(|| {
                ApiError::bad_request("parameter timeout must be a whole number of microseconds")
            })?;
            let d = Duration::from_micros(micros);
            asked = Some(asked.map_or(d, |a| a.min(d)));
        }
        let raw = r.raw_input_contents;
        if !raw.is_empty() && raw.len() != r.inputs.len() {
            return Err(ApiError::bad_request(format!(
                "raw_input_contents has {} entries for {} inputs; give one per input, in order",
                raw.len(),
                r.inputs.len()
            )));
        }
        let mut raw = raw.into_iter();
        let mut inputs: Vec<outpost_host::Tensor> = Vec::with_capacity(r.inputs.len());
        for input in r.inputs {
            let data = match (raw.next(), input.contents) {
                (Some(bytes), None) => WireData::Raw(bytes),
                (None, Some(contents)) => raw_contents(&input.datatype, contents)?,
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(format!(
                        "input '{}' has both contents and raw_input_contents; give one",
                        input.name
                    )));
                }
                (None, None) => {
                    return Err(ApiError::bad_request(format!(
                        "input '{}' has no data (contents or raw_input_contents)",
                        input.name
                    )));
                }
            };
            served.add_input(
                &mut inputs,
                WireInput {
                    name: input.name,
                    datatype: input.datatype,
                    shape: input.shape,
                    data,
                },
            )?;
        }
        let wanted: Vec<String> = if r.outputs.is_empty() {
            served.outputs.iter().map(|(n, _)| n.clone()).collect()
        } else {
            let mut wanted = Vec::new();
            for o in r.outputs {
                served.check_output(&o.name)?;
                wanted.push(o.name);
            }
            wanted
        };
        let outputs = served
            .infer(&entry, inputs, asked, &self.app.metrics)
            .await?;
        let mut tensors = Vec::new();
        let mut raw_outputs = Vec::new();
        for tensor in outputs {
            if !wanted.contains(&tensor.name) {
                continue;
            }
            let out = WireOutput::new(tensor);
            tensors.push(InferOutputTensor {
                name: out.name.clone(),
                datatype: out.datatype.into(),
                shape: out.shape.clone(),
                parameters: Default::default(),
                contents: None,
            });
            // As Triton answers: every output in raw_output_contents.
            raw_outputs.push(out.raw);
        }
        Ok(pb::ModelInferResponse {
            model_name: served.name.clone(),
            model_version: served.version.clone(),
            id: r.id,
            parameters: Default::default(),
            outputs: tensors,
            raw_output_contents: raw_outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert(
            "grpc-timeout",
            "250m".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert(
            "grpc-timeout",
            "3S".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        m.insert(
            "grpc-timeout",
            "x".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(grpc_timeout(&m), None);
    }
}
