"""Image-quality metrics shared by both systems: FID (`fid`), Inception score (`inception_score`), and the
Inception features they are computed from (`features`)."""
