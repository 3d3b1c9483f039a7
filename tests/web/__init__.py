"""The portal web app: JSON API, pages, dashboard, API schema."""
