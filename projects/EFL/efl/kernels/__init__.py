"""The fast paths of EFL (and the reference they are checked against), behind EqualizedFocalLoss."""
