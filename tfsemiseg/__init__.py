"""tfsemiseg: label-efficient 2D medical image segmentation with TensorFlow/Keras.

Semi-supervised contrastive learning (global SimCLR pre-training, supervised local
pixel contrast, fine-tuning) on a Keras functional U-Net.
"""

__version__ = "0.1.0"
