"""What NVIDIA's recipes share across the three architectures (reference: 8 GPUs, AMP)."""

COMMON = {
    "batch_size": 256,  # per GPU
    "num_iter": 90,
    "iter_unit": "epoch",
    "lr_init": 0.256,  # per 256 images: LR = lr_init * global_batch / 256
    "lr_warmup_epochs": 8,
    "cosine_lr": True,
    "momentum": 0.875,  # SGD, not Nesterov
    "label_smoothing": 0.1,
    "mixup": 0.0,  # 0.2 for the 250-epoch recipes
    "image_size": 224,
    "num_classes": 1000,
}
