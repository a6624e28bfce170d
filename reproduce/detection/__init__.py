"""SPP-net detection on VOC 2007 (PAPER.md section 7): proposals, multi-scale conv5 features pooled per window,
fc fine-tuning, linear SVMs, bounding-box regression, NMS and VOC AP; and R-CNN mode for comparison."""
