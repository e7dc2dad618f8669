//! Linear probing, fine-tuning and evaluation (top-1/top-5 and the study's
//! robustness tests), on the shared training loop: the run's config in
//! `config`, the training task in `task`, evaluation in `evaluation`.

pub mod augment;
mod config;
mod evaluation;
pub mod model;
mod task;

pub use config::{ClassifyConfig, ClassifyOutput, ClassifyTrain};
pub use evaluation::{Accuracy, evaluate, load_classifier, occlusion_rows, shuffled_patches};
pub use model::{Classifier, Mode, Perturb};
pub use task::{
    ClassifyResults, drop_path_scales, encoder_weights, finetune_decays, layer_decay_scale, layer_id, train,
};
