"""Audio front-end: loading, resampling, fixed-length clips, log-mel/MFCC, augmentation."""
