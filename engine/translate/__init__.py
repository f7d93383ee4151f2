"""Translation evaluation: generation, sacreBLEU scores, language ID (arXiv 2604.02881's protocol)."""
