"""Numbers shared by the data pipelines, the exported model and the demo."""

# ImageNet mean / std on the 0-255 scale (0.485/0.456/0.406 and 0.229/0.224/0.225 x 255).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)

# Eval preprocessing: resize the shorter side to image_size / CROP_FRACTION, center crop.
EVAL_CROP_FRACTION = 224 / 256
