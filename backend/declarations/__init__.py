"""The declaration (申报入库) of a town's business day for the e-tax bureau's entrusted
collection (委托代征)."""
