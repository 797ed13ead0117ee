def fit_gaussians(*a, **k): raise NotImplementedError
