// Renders user 1's latest posts; served with Cache-Control: immutable.
fetch("/api/users/1/posts")
  .then((r) => (r.ok ? r.json() : []))
  .then((posts) => {
    const feed = document.getElementById("feed");
    for (const p of posts) {
      const div = document.createElement("div");
      div.className = "post";
      div.textContent = p.body;
      feed.appendChild(div);
    }
  });
