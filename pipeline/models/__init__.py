"""Networks of the pipeline: the StyleGAN2 generator (`stylegan2`), its checkpoint formats
(`stylegan2_formats`) and, beside them, the encoder, discriminator and readers of foreign checkpoints."""
