//! `mixtrain demix --validate M`: real models trained on scored mixtures, to check that the
//! merged proxies rank mixtures as training would.

use std::fmt::Write as _;
use std::path::Path;

use burn::module::AutodiffModule;

use super::{by_name, search, train_from, NamedParams, Proxy};
use crate::backend::TrainBackend;
use crate::config::Config;
use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::params::load_params;
use crate::target::Target;
use crate::train::Session;

/// Trains `count` real models (from the base, `validate_steps`) on scored mixtures spread over
/// the range of proxy losses, writes validation.csv and returns the Spearman correlation of
/// proxy vs trained target loss.
#[allow(clippy::too_many_arguments)]
pub(super) fn validate<B: TrainBackend>(
    base: &Config,
    start: &NamedParams,
    proxies: &[Proxy],
    count: usize,
    dir: &Path,
    names: &[String],
    scorer: &Session<B>,
    target: &Target,
    device: &B::Device,
) -> Result<f64> {
    let steps = match base.demix.validate_steps {
        0 => base.demix.component_steps,
        n => n,
    };
    let losses: Vec<f64> = proxies.iter().map(|p| p.target_loss).collect();
    let order = search::lowest(&losses, losses.len());
    let count = count.min(order.len());
    let picked: Vec<usize> = (0..count)
        .map(|i| {
            order[if count == 1 {
                0
            } else {
                i * (order.len() - 1) / (count - 1)
            }]
        })
        .collect();
    let mut text = String::new();
    for name in names {
        write!(text, "w_{name},").expect("String");
    }
    text.push_str("proxy_target_loss,trained_target_loss\n");
    let (mut proxy, mut trained) = (Vec::new(), Vec::new());
    for (i, &at) in picked.iter().enumerate() {
        tracing::info!(
            model = i + 1,
            of = count,
            steps,
            "training a validation model"
        );
        let params = by_name(train_from::<B>(
            base,
            start,
            &proxies[at].weights,
            steps,
            device,
        )?);
        let model = load_params(
            scorer.trainer.model.clone(),
            &params,
            Path::new("validation model"),
        )?;
        let loss = scorer.evaluate_model(&model.valid()).target(target);
        for w in &proxies[at].weights {
            write!(text, "{w},").expect("String");
        }
        writeln!(text, "{},{loss}", proxies[at].target_loss).expect("String");
        proxy.push(proxies[at].target_loss);
        trained.push(loss);
    }
    let path = dir.join("validation.csv");
    write_atomic(&path, text.as_bytes())?;
    Ok(super::spearman(&proxy, &trained))
}
