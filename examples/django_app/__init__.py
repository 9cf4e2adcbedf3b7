"""A minimal Django project with the avatar view.

Run it from the repository root (``pip install -e '.[server,examples]'`` first)::

    DJANGO_SETTINGS_MODULE=examples.django_app.settings python -m django runserver --noreload
"""
