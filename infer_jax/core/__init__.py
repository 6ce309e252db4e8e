"""The pure numeric core: functions of arrays and pytrees, with no I/O and no config objects.

bn_stats -- capture of BatchNorm-input statistics, the BN-matching loss, the recover loss.
subsets  -- the INFER budget (K subsets), the real images of each subset, the compression ratio.
augment  -- on-device augmentation of students (crop+flip, resized crop+flip, flip) and of
            recover subsets (roll, differentiable resized crop+flip).
losses   -- the student's losses: KL with temperature, MixUp.
"""
