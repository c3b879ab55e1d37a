"""The body of work each page rests on: (authors, year, title, link), shown at the end of the page."""

from __future__ import annotations

CS231N = ("Karpathy, Johnson et al.", 2016, "CS231n: Understanding and Visualizing Convolutional Neural Networks",
          "https://cs231n.github.io/understanding-cnn/")
ERHAN = ("Erhan, Bengio, Courville & Vincent", 2009, "Visualizing Higher-Layer Features of a Deep Network",
         "https://www.researchgate.net/publication/265022827")
OLAH_FV = ("Olah, Mordvintsev & Schubert", 2017, "Feature Visualization", "https://distill.pub/2017/feature-visualization/")
OLAH_BB = ("Olah, Satyanarayan, Johnson, Carter, Schubert, Ye & Mordvintsev", 2018,
           "The Building Blocks of Interpretability", "https://distill.pub/2018/building-blocks/")
MICROSCOPE = ("OpenAI", 2020, "OpenAI Microscope", "https://openai.com/index/microscope/")
ZEILER = ("Zeiler & Fergus", 2014, "Visualizing and Understanding Convolutional Networks",
          "https://arxiv.org/abs/1311.2901")
MORCOS = ("Morcos, Barrett, Rabinowitz & Botvinick", 2018, "On the importance of single directions for generalization",
          "https://arxiv.org/abs/1803.06959")
ADEBAYO = ("Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim", 2018, "Sanity Checks for Saliency Maps",
           "https://arxiv.org/abs/1810.03292")
IG = ("Sundararajan, Taly & Yan", 2017, "Axiomatic Attribution for Deep Networks", "https://arxiv.org/abs/1703.01365")
SMOOTHGRAD = ("Smilkov, Thorat, Kim, Viégas & Wattenberg", 2017, "SmoothGrad: removing noise by adding noise",
              "https://arxiv.org/abs/1706.03825")
GRADCAM = ("Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra", 2017, "Grad-CAM: Visual Explanations from Deep "
           "Networks via Gradient-based Localization", "https://arxiv.org/abs/1610.02391")
RISE = ("Petsiuk, Das & Saenko", 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models "
        "(deletion and insertion)", "https://arxiv.org/abs/1806.07421")
CAPTUM = ("Kokhlikyan, Miglani, Martin et al.", 2020, "Captum: A unified and generic model interpretability library "
          "for PyTorch", "https://arxiv.org/abs/2009.07896")
SHAP = ("Lundberg & Lee", 2017, "A Unified Approach to Interpreting Model Predictions", "https://arxiv.org/abs/1705.07874")
STRUMBELJ = ("Štrumbelj & Kononenko", 2014, "Explaining prediction models and individual predictions with feature "
             "contributions", "https://doi.org/10.1007/s10115-013-0679-x")
BREIMAN = ("Breiman", 2001, "Random Forests (permutation importance)", "https://doi.org/10.1023/A:1010933404324")
FRIEDMAN = ("Friedman & Popescu", 2008, "Predictive learning via rule ensembles (the H statistic)",
            "https://arxiv.org/abs/0811.1679")
GOLDSTEIN = ("Goldstein, Kapelner, Bleich & Pitkin", 2015, "Peeking Inside the Black Box: Visualizing Statistical "
             "Learning with Plots of Individual Conditional Expectation", "https://arxiv.org/abs/1309.6392")
KONIS = ("Konis", 2007, "Linear programming algorithms for detecting separated data in binary logistic regression "
         "models", "https://ora.ox.ac.uk/objects/uuid:8f9ee0d0-d78e-4101-9ab4-f9cbceed2a2a")
SEABOLD = ("Seabold & Perktold", 2010, "statsmodels: Econometric and statistical modeling with python",
           "https://www.statsmodels.org/")
GEIRHOS = ("Geirhos, Jacobsen, Michaelis, Zemel, Brendel, Bethge & Wichmann", 2020,
           "Shortcut learning in deep neural networks", "https://arxiv.org/abs/2004.07780")
LAPUSCHKIN = ("Lapuschkin, Wäldchen, Binder, Montavon, Samek & Müller", 2019, "Unmasking Clever Hans predictors and "
              "assessing what machines really learn", "https://www.nature.com/articles/s41467-019-08987-4")
NMF = ("Lee & Seung", 1999, "Learning the parts of objects by non-negative matrix factorization",
       "https://www.nature.com/articles/44565")
MONOSEMANTICITY = ("Bricken, Templeton, Batson et al.", 2023, "Towards Monosemanticity: Decomposing Language Models "
                   "With Dictionary Learning", "https://transformer-circuits.pub/2023/monosemantic-features")
TOPK = ("Gao, Dupré la Tour, Tillman et al.", 2024, "Scaling and evaluating sparse autoencoders",
        "https://arxiv.org/abs/2406.04093")
SZEGEDY = ("Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow & Fergus", 2013, "Intriguing properties of neural "
           "networks", "https://arxiv.org/abs/1312.6199")
SUPERPOSITION = ("Elhage, Hume, Olsson et al.", 2022, "Toy Models of Superposition",
                 "https://transformer-circuits.pub/2022/toy_model/")
TSNE = ("van der Maaten & Hinton", 2008, "Visualizing Data using t-SNE", "https://jmlr.org/papers/v9/vandermaaten08a.html")
HAMBLIN = ("Hamblin, Fel, Saha, Konkle & Alvarez", 2024, "Feature Accentuation: Revealing 'What' Features Respond to "
           "in Natural Images", "https://arxiv.org/abs/2402.10039")
MACO = ("Fel, Boissin, Boutin et al.", 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude "
        "Constrained Optimization", "https://arxiv.org/abs/2306.06805")

#: page file -> references
PAGES = {
    "index.html": [CS231N, OLAH_FV, OLAH_BB, MICROSCOPE],
    "model.html": [CS231N, ZEILER],
    "sanity.html": [CS231N],
    "filters.html": [CS231N, ZEILER],
    "activations.html": [CS231N, ZEILER],
    "examples.html": [CS231N, ZEILER, MORCOS, MICROSCOPE],
    "featvis.html": [ERHAN, OLAH_FV, MACO, HAMBLIN],
    "directions.html": [OLAH_BB, NMF, MONOSEMANTICITY, TOPK, SZEGEDY, SUPERPOSITION, MORCOS, TSNE],
    "attribution.html": [IG, SMOOTHGRAD, GRADCAM, ZEILER, RISE, ADEBAYO, CAPTUM, SHAP],
    "shortcuts.html": [GEIRHOS, LAPUSCHKIN, IG, ADEBAYO],
    "tabular.html": [SEABOLD, KONIS, BREIMAN, STRUMBELJ, SHAP, IG, FRIEDMAN, GOLDSTEIN],
    "layers.html": [CS231N, MORCOS],
    "unit.html": [CS231N, ERHAN, OLAH_FV, MORCOS, IG],
    "methods.html": [GEIRHOS, CS231N, MORCOS, ADEBAYO],
}
