"""Constants shared by the model and the preprocessing."""

# ImageNet statistics: VGGT normalises its [0, 1] input with them, and OpenVLA's DINOv2 branch uses the same.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VGGT is trained at 518 px = 37 patches of 14 px.
VGGT_IMAGE_SIZE = 518
