// Builds the dashboard into dist/: one bundled script, one stylesheet (Leaflet's + ours),
// index.html. `locus` serves dist/ at / (push.dashboard_dir).
import * as esbuild from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await esbuild.build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: true,
  target: ["es2020"],
  outfile: "dist/app.js",
  logLevel: "info",
});
writeFileSync(
  "dist/app.css",
  readFileSync("node_modules/leaflet/dist/leaflet.css", "utf8") + "\n" + readFileSync("src/style.css", "utf8"),
);
copyFileSync("src/index.html", "dist/index.html");
console.log("dashboard built in dist/");
