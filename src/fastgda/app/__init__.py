"""The embedded world's application, kept apart from the library (as open_clip_train is from open_clip).

``world/`` generates the shapes world, ``pack`` finds the shipped model and reference, ``reference`` builds and
reads the reference ground truth, ``demo`` and ``full_profile`` run the main job (the demo gives the world, the
shipped model and the reference's rankings to the pipeline's steps and report, ``fastgda.pipeline``), and
``visual`` draws the model's sample grids. The app imports the library; the library (everything in ``fastgda``
outside ``app``, ``cli`` and ``service``) never imports the app, a rule ``.importlinter`` states and
``tests/test_package.py`` checks.
"""
